//! `cortex baseline train|show`: the anomaly baseline of one host, from the operator's side.

use std::process::ExitCode;

use anyhow::Context;
use cortex::anomaly::{self, Model, ModelStore};
use cortex::config::CortexConfig;
use cortex::store::open_store;
use qsc_event::now_ns;

use super::when::{When, format_ns};

/// Trains `host`'s model on its stored samples in `[since, until)` and saves it.
pub fn train(
    config: &CortexConfig,
    host: &str,
    since: When,
    until: Option<When>,
) -> anyhow::Result<ExitCode> {
    let now = now_ns();
    let since_ns = since.resolve(now);
    let until_ns = until.map_or(now, |until| until.resolve(now));
    if since_ns >= until_ns {
        anyhow::bail!(
            "--since ({}) is not before --until ({})",
            format_ns(since_ns),
            format_ns(until_ns)
        );
    }
    let store = open_store(&config.store)?;
    let model = anomaly::train(host, since_ns, until_ns, store.as_ref(), &config.anomaly)
        .with_context(|| format!("training the anomaly model of host `{host}`"))?;
    let path = ModelStore::open(&config.anomaly.models_dir)?.path_for(host);
    println!("trained host {host}: model version {}", model.version);
    print_training(&model);
    println!("saved to           {}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// Prints `host`'s saved model; exit status 1 when it has none.
pub fn show(config: &CortexConfig, host: &str, json: bool) -> anyhow::Result<ExitCode> {
    let models = ModelStore::open(&config.anomaly.models_dir)?;
    let Some(model) = models.load(host)? else {
        eprintln!(
            "host `{host}` has no anomaly model in {} yet",
            config.anomaly.models_dir.display()
        );
        return Ok(ExitCode::from(1));
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&summary(&model))?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("host {host}: model version {}", model.version);
    println!("trained at         {}", format_ns(model.trained_at_ns));
    print_training(&model);
    println!("forest seed        {}", model.seed);
    println!("file               {}", models.path_for(host).display());
    println!("typical values (training medians):");
    for (name, median) in model.features.iter().zip(model.medians) {
        println!("  {name:<24} {median:.3}");
    }
    Ok(ExitCode::SUCCESS)
}

fn print_training(model: &Model) {
    let training = &model.training;
    println!(
        "training window    {} .. {}",
        format_ns(training.since_ns),
        format_ns(training.until_ns)
    );
    println!(
        "windows            {} of {} s",
        training.windows, model.window_s
    );
    println!(
        "excluded           {} windows overlapping incidents",
        training.excluded_incident_windows
    );
}

fn summary(model: &Model) -> serde_json::Value {
    let typical: serde_json::Map<String, serde_json::Value> = model
        .features
        .iter()
        .zip(model.medians)
        .map(|(name, median)| (name.clone(), median.into()))
        .collect();
    serde_json::json!({
        "host": model.host,
        "version": model.version,
        "trained_at_ns": model.trained_at_ns,
        "since_ns": model.training.since_ns,
        "until_ns": model.training.until_ns,
        "windows": model.training.windows,
        "excluded_incident_windows": model.training.excluded_incident_windows,
        "window_s": model.window_s,
        "seed": model.seed,
        "typical": typical,
    })
}
