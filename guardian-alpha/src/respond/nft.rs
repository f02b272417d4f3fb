//! Applies nftables scripts: one script is one kernel transaction, so a table is created,
//! replaced or removed atomically.
//!
//! With the default `[respond] nft = "nft"`, scripts run in this process through libnftables
//! (the library `nft` itself is built on, loaded at run time), which saves starting `nft` for
//! each action (milliseconds, most of an isolation's time); without the library, or with
//! another `nft` configured, the script goes through `nft -f -`.

use std::{
    ffi::{CStr, CString, c_char, c_int, c_void},
    io::Write,
    path::Path,
    process::{Command, Stdio},
    sync::{Mutex, OnceLock},
};

use super::RespondError;

/// The `nft` setting that selects libnftables when it is installed.
const DEFAULT_NFT: &str = "nft";
/// libnftables' shared object (Debian's `libnftables1`, a dependency of `nftables`).
const LIBNFTABLES: &CStr = c"libnftables.so.1";

/// Runs `script` as one transaction: through libnftables when `nft` is the default and the
/// library is there, else through `nft -f -`.
pub fn apply(nft: &Path, script: &str) -> Result<(), RespondError> {
    if nft == Path::new(DEFAULT_NFT)
        && let Some(library) = Libnftables::shared()
    {
        let mut library = library.lock().map_err(|_| RespondError::Nft {
            nft: "libnftables".into(),
            reason: "its lock is poisoned".into(),
        })?;
        return library.run(script).map_err(|reason| RespondError::Nft {
            nft: "libnftables".into(),
            reason,
        });
    }
    spawn(nft, script)
}

/// A libnftables context, loaded once per process.
struct Libnftables {
    ctx: *mut c_void,
    run_cmd: unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int,
    error_buffer: unsafe extern "C" fn(*mut c_void) -> *const c_char,
}

// SAFETY: the context is used by one thread at a time (behind the Mutex of `shared`).
unsafe impl Send for Libnftables {}

impl Libnftables {
    /// The process's context, or None when the library cannot be loaded.
    fn shared() -> Option<&'static Mutex<Libnftables>> {
        static SHARED: OnceLock<Option<Mutex<Libnftables>>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let loaded = Self::load();
                if loaded.is_none() {
                    tracing::info!("libnftables not loadable: nftables scripts run through `nft`");
                }
                loaded.map(Mutex::new)
            })
            .as_ref()
    }

    fn load() -> Option<Self> {
        // SAFETY: dlopen of a constant library name; the handle is never closed, so the
        // symbols below stay valid for the life of the process.
        let handle =
            unsafe { libc::dlopen(LIBNFTABLES.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return None;
        }
        // SAFETY: dlsym on a valid handle with constant names.
        let symbol = |name: &CStr| unsafe { libc::dlsym(handle, name.as_ptr()) };
        let (new, buffer, run_cmd, error_buffer) = (
            symbol(c"nft_ctx_new"),
            symbol(c"nft_ctx_buffer_error"),
            symbol(c"nft_run_cmd_from_buffer"),
            symbol(c"nft_ctx_get_error_buffer"),
        );
        if [new, buffer, run_cmd, error_buffer]
            .iter()
            .any(|p| p.is_null())
        {
            return None;
        }
        // SAFETY: these are libnftables' documented signatures (libnftables(3)):
        // `struct nft_ctx *nft_ctx_new(uint32_t flags)`, `int nft_ctx_buffer_error(struct
        // nft_ctx *)`, `int nft_run_cmd_from_buffer(struct nft_ctx *, const char *)` and
        // `const char *nft_ctx_get_error_buffer(struct nft_ctx *)`.
        unsafe {
            let new: unsafe extern "C" fn(u32) -> *mut c_void = std::mem::transmute(new);
            let buffer: unsafe extern "C" fn(*mut c_void) -> c_int = std::mem::transmute(buffer);
            // NFT_CTX_DEFAULT.
            let ctx = new(0);
            if ctx.is_null() || buffer(ctx) != 0 {
                return None;
            }
            Some(Libnftables {
                ctx,
                run_cmd: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int,
                >(run_cmd),
                error_buffer: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(*mut c_void) -> *const c_char,
                >(error_buffer),
            })
        }
    }

    /// Runs one script; libnftables' error text when it fails.
    fn run(&mut self, script: &str) -> Result<(), String> {
        let script =
            CString::new(script).map_err(|_| "the script contains a NUL byte".to_owned())?;
        // SAFETY: a live context and a NUL-terminated script.
        let status = unsafe { (self.run_cmd)(self.ctx, script.as_ptr()) };
        // SAFETY: the error buffer is a NUL-terminated string owned by the context (or null),
        // read before the next call on it.
        let error = unsafe {
            let text = (self.error_buffer)(self.ctx);
            (!text.is_null()).then(|| CStr::from_ptr(text).to_string_lossy().trim().to_owned())
        };
        match status {
            0 => Ok(()),
            _ => Err(error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| format!("the script failed with status {status}"))),
        }
    }
}

/// Runs `script` through `nft -f -` as one transaction.
fn spawn(nft: &Path, script: &str) -> Result<(), RespondError> {
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
    fn libnftables_reports_a_bad_script_with_its_error() {
        let Some(library) = Libnftables::shared() else {
            eprintln!("skipped: libnftables is not installed");
            return;
        };
        // A syntax error fails before any netlink traffic, so this needs no privileges.
        let error = library.lock().unwrap().run("tabel inet x\n").unwrap_err();
        assert!(error.contains("syntax error"), "{error}");
    }

    #[test]
    fn a_missing_nft_is_a_named_error() {
        let err = apply(Path::new("/nonexistent/nft"), "").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/nft"), "{err}");
    }
}
