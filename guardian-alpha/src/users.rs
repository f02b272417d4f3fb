//! uid → user name, from /etc/passwd, reloaded when the file changes.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::SystemTime};

#[derive(Default)]
pub struct UserNames {
    path: Option<PathBuf>,
    loaded_mtime: Option<SystemTime>,
    names: HashMap<u32, Arc<str>>,
}

impl UserNames {
    pub fn from_passwd(path: impl Into<PathBuf>) -> Self {
        let mut names = UserNames {
            path: Some(path.into()),
            ..UserNames::default()
        };
        names.reload_if_changed();
        names
    }

    pub fn reload_if_changed(&mut self) {
        let Some(path) = &self.path else {
            return;
        };
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if mtime == self.loaded_mtime {
            return;
        }
        self.loaded_mtime = mtime;
        self.names = std::fs::read_to_string(path)
            .map(|text| parse_passwd(&text))
            .unwrap_or_default();
    }

    pub fn name(&self, uid: u32) -> Option<Arc<str>> {
        self.names.get(&uid).cloned()
    }
}

pub fn parse_passwd(text: &str) -> HashMap<u32, Arc<str>> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let uid = fields.nth(1)?.parse().ok()?;
            Some((uid, name.into()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_passwd_lines_and_skips_garbage() {
        let names = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\nbad line\nalice:x:1000:1000::/home/alice:/bin/sh\n",
        );
        assert_eq!(names.get(&0).map(AsRef::as_ref), Some("root"));
        assert_eq!(names.get(&1000).map(AsRef::as_ref), Some("alice"));
        assert_eq!(names.len(), 2);
    }
}
