//! Applies nftables scripts with `nft -f -`: one script is one kernel transaction, so a table
//! is created, replaced or removed atomically.

use std::{
    io::Write,
    path::Path,
    process::{Command, Stdio},
};

use super::RespondError;

/// Runs `script` through `nft -f -` as one transaction.
pub fn apply(nft: &Path, script: &str) -> Result<(), RespondError> {
    let failed = |reason: String| RespondError::Nft {
        nft: nft.display().to_string(),
        reason,
    };
    let mut child = Command::new(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| failed(format!("cannot write the script: {e}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| failed(format!("cannot wait for it: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    Err(failed(format!(
        "{}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

/// A script that replaces `table` (family `inet`) with `body`, or removes it when `body` is
/// None. Declaring the table first makes the delete valid whether or not it existed.
pub fn replace_table(table: &str, body: Option<&str>) -> String {
    let mut script = format!("table inet {table}\ndelete table inet {table}\n");
    if let Some(body) = body {
        script.push_str(&format!("table inet {table} {{\n{body}}}\n"));
    }
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_and_remove_scripts() {
        assert_eq!(
            replace_table("t", None),
            "table inet t\ndelete table inet t\n"
        );
        assert_eq!(
            replace_table("t", Some("  chain c {}\n")),
            "table inet t\ndelete table inet t\ntable inet t {\n  chain c {}\n}\n"
        );
    }

    #[test]
    fn a_missing_nft_is_a_named_error() {
        let err = apply(Path::new("/nonexistent/nft"), "").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/nft"), "{err}");
    }
}
