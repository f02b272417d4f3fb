//! Builds the [`KernelLayout`] the kernel program needs: struct member offsets from BTF and
//! tracepoint field offsets from tracefs `format` files.

use std::{collections::HashMap, path::Path};

use guardian_alpha_common::{ExeFolderLayout, KernelLayout};

use crate::btf::Btf;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "cannot read tracepoint format {path}: {source} (is tracefs mounted at /sys/kernel/tracing?)"
    )]
    Format {
        path: String,
        source: std::io::Error,
    },
    #[error("tracepoint {tracepoint} has no field `{field}`")]
    MissingField { tracepoint: String, field: String },
}

/// Field name → byte offset, parsed from a tracefs `format` file.
pub fn parse_format(text: &str) -> HashMap<String, u32> {
    let mut fields = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("field:") else {
            continue;
        };
        let mut parts = rest.split(';');
        let decl = parts.next().unwrap_or("").trim();
        let offset = parts
            .find_map(|p| p.trim().strip_prefix("offset:"))
            .and_then(|o| o.parse::<u32>().ok());
        // The name is the last word of the declaration, without any array suffix.
        let name = decl
            .rsplit(' ')
            .next()
            .unwrap_or("")
            .split('[')
            .next()
            .unwrap_or("");
        if let Some(offset) = offset
            && !name.is_empty()
        {
            fields.insert(name.to_owned(), offset);
        }
    }
    fields
}

pub struct TracepointFormats<'a> {
    root: &'a Path,
}

impl<'a> TracepointFormats<'a> {
    pub fn new(root: &'a Path) -> Self {
        TracepointFormats { root }
    }

    pub fn fields(&self, tracepoint: &str) -> Result<HashMap<String, u32>, LayoutError> {
        let path = self.root.join("events").join(tracepoint).join("format");
        let text = std::fs::read_to_string(&path).map_err(|source| LayoutError::Format {
            path: path.display().to_string(),
            source,
        })?;
        Ok(parse_format(&text))
    }
}

fn field(fields: &HashMap<String, u32>, tracepoint: &str, name: &str) -> Result<u32, LayoutError> {
    fields
        .get(name)
        .copied()
        .ok_or_else(|| LayoutError::MissingField {
            tracepoint: tracepoint.into(),
            field: name.into(),
        })
}

/// Resolves every offset. Missing BTF members leave their offsets at 0 (the kernel program
/// then reports 0 for ppid, argv, exit code or a closed connection's byte counts) and are
/// returned as warnings; missing
/// tracepoint fields are errors because the hook would read garbage.
pub fn resolve(
    btf: Option<&Btf>,
    formats: &TracepointFormats,
) -> Result<(KernelLayout, ExeFolderLayout, Vec<String>), LayoutError> {
    let mut warnings = Vec::new();
    let mut member = |strukt: &str, name: &str| match btf.map(|b| b.member_offset(strukt, name)) {
        Some(Ok(offset)) => offset,
        Some(Err(err)) => {
            warnings.push(err.to_string());
            0
        }
        None => {
            warnings.push(format!("no kernel BTF: {strukt}.{name} unknown"));
            0
        }
    };
    let mut layout = KernelLayout {
        task_real_parent: member("task_struct", "real_parent"),
        task_tgid: member("task_struct", "tgid"),
        task_mm: member("task_struct", "mm"),
        task_exit_code: member("task_struct", "exit_code"),
        mm_arg_start: member("mm_struct", "arg_start"),
        mm_arg_end: member("mm_struct", "arg_end"),
        tcp_bytes_acked: member("tcp_sock", "bytes_acked"),
        tcp_bytes_received: member("tcp_sock", "bytes_received"),
        // `struct sock` starts with its `sock_common`.
        sk_cookie: member("sock_common", "skc_cookie"),
        ..KernelLayout::default()
    };
    let exe_folder = btf.map_or_else(ExeFolderLayout::default, |btf| {
        resolve_exe_folder(btf, &mut warnings)
    });

    let tp = "sched/sched_process_exec";
    layout.exec_filename = field(&formats.fields(tp)?, tp, "filename")?;
    let tp = "sched/sched_process_exit";
    layout.exit_group_dead = formats.fields(tp)?.get("group_dead").copied().unwrap_or(0);
    let tp = "task/task_newtask";
    let f = formats.fields(tp)?;
    layout.newtask_pid = field(&f, tp, "pid")?;
    layout.newtask_clone_flags = field(&f, tp, "clone_flags")?;
    let tp = "sock/inet_sock_set_state";
    let f = formats.fields(tp)?;
    layout.sk_skaddr = field(&f, tp, "skaddr")?;
    layout.sk_oldstate = field(&f, tp, "oldstate")?;
    layout.sk_newstate = field(&f, tp, "newstate")?;
    layout.sk_sport = field(&f, tp, "sport")?;
    layout.sk_dport = field(&f, tp, "dport")?;
    layout.sk_family = field(&f, tp, "family")?;
    layout.sk_protocol = field(&f, tp, "protocol")?;
    layout.sk_saddr = field(&f, tp, "saddr")?;
    layout.sk_daddr = field(&f, tp, "daddr")?;
    layout.sk_saddr_v6 = field(&f, tp, "saddr_v6")?;
    layout.sk_daddr_v6 = field(&f, tp, "daddr_v6")?;
    let tp = "signal/signal_generate";
    let f = formats.fields(tp)?;
    layout.signal_sig = field(&f, tp, "sig")?;
    layout.signal_pid = field(&f, tp, "pid")?;
    Ok((layout, exe_folder, warnings))
}

/// The offsets from a task's mm to its executable's folder inode mode, all or none (an
/// offset of 0 is a real one here: `i_mode` starts `struct inode`).
fn resolve_exe_folder(btf: &Btf, warnings: &mut Vec<String>) -> ExeFolderLayout {
    let chain = [
        ("mm_struct", "exe_file"),
        ("file", "f_path"),
        ("path", "dentry"),
        ("dentry", "d_parent"),
        ("dentry", "d_inode"),
        ("inode", "i_mode"),
    ]
    .map(|(strukt, name)| btf.member_offset(strukt, name));
    match chain {
        [
            Ok(exe_file),
            Ok(f_path),
            Ok(dentry),
            Ok(parent),
            Ok(d_inode),
            Ok(i_mode),
        ] => ExeFolderLayout {
            mm_exe_file: exe_file,
            file_dentry: f_path + dentry,
            dentry_parent: parent,
            dentry_inode: d_inode,
            inode_mode: i_mode,
            known: 1,
        },
        failed => {
            warnings.extend(
                failed
                    .into_iter()
                    .filter_map(Result::err)
                    .map(|e| format!("{e}: an exec's folder mode is looked up in /proc instead")),
            );
            ExeFolderLayout::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOCK_FORMAT: &str = "name: inet_sock_set_state
ID: 1491
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;
";

    #[test]
    fn parses_names_offsets_arrays_and_data_loc() {
        let fields = parse_format(SOCK_FORMAT);
        assert_eq!(fields["oldstate"], 16);
        assert_eq!(fields["saddr_v6"], 40);
        assert_eq!(fields["skaddr"], 8);
        assert_eq!(fields["filename"], 8);
        assert_eq!(fields["common_type"], 0);
    }

    #[test]
    fn missing_field_is_a_named_error() {
        let fields = parse_format(SOCK_FORMAT);
        assert!(matches!(
            field(&fields, "sock/x", "sport"),
            Err(LayoutError::MissingField { .. })
        ));
    }
}
