//! Where events go: JSON lines on stdout or appended to a file.

use std::{
    fs::OpenOptions,
    io::{BufWriter, Write},
    path::PathBuf,
};

use qsc_event::Event;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot open output {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write events: {0}")]
    Write(#[from] std::io::Error),
}

pub struct JsonLines {
    writer: BufWriter<Box<dyn Write + Send>>,
}

impl JsonLines {
    /// "-" is stdout; anything else a file, created 0600 if missing and appended to.
    pub fn open(target: &str) -> Result<Self, OutputError> {
        let sink: Box<dyn Write + Send> = if target == "-" {
            Box::new(std::io::stdout())
        } else {
            use std::os::unix::fs::OpenOptionsExt;
            let path = PathBuf::from(target);
            Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|source| OutputError::Open { path, source })?,
            )
        };
        Ok(JsonLines {
            writer: BufWriter::with_capacity(256 * 1024, sink),
        })
    }

    pub fn write(&mut self, event: &Event) -> Result<(), OutputError> {
        serde_json::to_writer(&mut self.writer, event).map_err(std::io::Error::from)?;
        self.writer.write_all(b"\n")?;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), OutputError> {
        Ok(self.writer.flush()?)
    }
}
