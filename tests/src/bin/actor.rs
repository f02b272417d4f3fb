//! qsc-test-actor: performs one security-relevant action with real syscalls, so end-to-end
//! tests and benchmarks can check that the agent sees it. Acts only on what it is given
//! (its own memory, paths and addresses the caller created).
//!
//! Usage: qsc-test-actor ACTION [ARGS…]; prints nothing on success, exits 1 with the reason.

use std::{
    ffi::CString,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    time::Duration,
};

fn fail(msg: String) -> ! {
    eprintln!("qsc-test-actor: {msg}");
    std::process::exit(1)
}

fn arg(args: &[String], n: usize, what: &str) -> String {
    args.get(n)
        .cloned()
        .unwrap_or_else(|| fail(format!("missing argument: {what}")))
}

fn num<T: std::str::FromStr>(args: &[String], n: usize, what: &str) -> T {
    arg(args, n, what)
        .parse()
        .unwrap_or_else(|_| fail(format!("{what} must be a number")))
}

fn check(rc: i64, what: &str) {
    if rc < 0 {
        fail(format!("{what}: {}", std::io::Error::last_os_error()));
    }
}

/// SO_LINGER {on, 0}: close sends RST and leaves no TIME_WAIT socket behind, so tens of
/// thousands of loopback connections do not exhaust the ephemeral ports.
fn reset_on_close(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let action = arg(&args, 0, "action");
    // SAFETY (all blocks below): raw syscalls on memory and ids owned by this process.
    match action.as_str() {
        // setresgid/setresuid to the current ids: a no-op change the kernel still traces.
        "setids" => unsafe {
            let (uid, gid) = (libc::getuid(), libc::getgid());
            check(libc::setresgid(gid, gid, gid) as i64, "setresgid");
            check(libc::setresuid(uid, uid, uid) as i64, "setresuid");
            check(libc::setgid(gid) as i64, "setgid");
            check(libc::setuid(uid) as i64, "setuid");
        },
        // capset to the current capabilities.
        "capset" => unsafe {
            let mut header = [0x2008_0522u32, 0]; // _LINUX_CAPABILITY_VERSION_3, this process
            let mut data = [0u32; 6];
            check(
                libc::syscall(libc::SYS_capget, header.as_mut_ptr(), data.as_mut_ptr()),
                "capget",
            );
            check(
                libc::syscall(libc::SYS_capset, header.as_mut_ptr(), data.as_ptr()),
                "capset",
            );
        },
        "ptrace-attach" => unsafe {
            let pid: libc::pid_t = num(&args, 1, "pid");
            check(
                libc::ptrace(libc::PTRACE_ATTACH, pid, 0usize, 0usize),
                "ptrace",
            );
            let mut status = 0;
            libc::waitpid(pid, &mut status, libc::__WALL);
            check(
                libc::ptrace(libc::PTRACE_DETACH, pid, 0usize, 0usize),
                "ptrace detach",
            );
        },
        "memfd" => unsafe {
            let name = CString::new(arg(&args, 1, "name"))
                .unwrap_or_else(|_| fail("name has a NUL".into()));
            check(
                libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) as i64,
                "memfd_create",
            );
        },
        // An anonymous RWX mapping, kept for `hold_ms` so a maps scan can find it.
        "mmap-rwx" => unsafe {
            let hold_ms: u64 = num(&args, 1, "hold_ms");
            let addr = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if addr == libc::MAP_FAILED {
                fail(format!("mmap: {}", std::io::Error::last_os_error()));
            }
            println!("{:#x}", addr as u64);
            std::thread::sleep(Duration::from_millis(hold_ms));
        },
        "mprotect-rwx" => unsafe {
            let addr = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if addr == libc::MAP_FAILED {
                fail(format!("mmap: {}", std::io::Error::last_os_error()));
            }
            check(
                libc::mprotect(
                    addr,
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                ) as i64,
                "mprotect",
            );
        },
        // Fileless execution: copy PROGRAM into a memfd and execve it from there.
        "memfd-exec" => unsafe {
            use std::os::fd::{FromRawFd, IntoRawFd};
            let program = arg(&args, 1, "program");
            let bytes =
                std::fs::read(&program).unwrap_or_else(|e| fail(format!("read {program}: {e}")));
            let fd = libc::memfd_create(c"qscatk-payload".as_ptr(), 0);
            check(fd as i64, "memfd_create");
            let mut file = std::fs::File::from_raw_fd(fd);
            file.write_all(&bytes)
                .unwrap_or_else(|e| fail(format!("write memfd: {e}")));
            let path = CString::new(format!("/proc/self/fd/{}", file.into_raw_fd()))
                .unwrap_or_else(|_| fail("fd path has a NUL".into()));
            let argv = [path.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            fail(format!("execve memfd: {}", std::io::Error::last_os_error()));
        },
        // Run as a setuid-root copy by another account: become root for real.
        "setuid-root" => unsafe {
            check(libc::setresgid(0, 0, 0) as i64, "setresgid");
            check(libc::setresuid(0, 0, 0) as i64, "setresuid");
        },
        // bpf(BPF_MAP_CREATE) with an empty attribute: rejected, but the call is traced.
        "bpf" => unsafe {
            let attr = [0u8; 128];
            libc::syscall(libc::SYS_bpf, 0, attr.as_ptr(), attr.len());
        },
        "kill" => unsafe {
            let pid: libc::pid_t = num(&args, 1, "pid");
            let sig: libc::c_int = num(&args, 2, "signal");
            check(libc::kill(pid, sig) as i64, "kill");
        },
        // Open `path` read-only `count` times (a flood for loss tests and benchmarks).
        "open-loop" => {
            let path = CString::new(arg(&args, 1, "path")).unwrap_or_else(|_| fail("NUL".into()));
            let count: u64 = num(&args, 2, "count");
            for _ in 0..count {
                // SAFETY: a valid C string; the fd is closed right away.
                unsafe {
                    let fd = libc::open(path.as_ptr(), libc::O_RDONLY);
                    check(fd as i64, "open");
                    libc::close(fd);
                }
            }
        }
        // fork+exec /bin/true `count` times, one after the other.
        "exec-loop" => {
            let count: u64 = num(&args, 1, "count");
            for _ in 0..count {
                let status = std::process::Command::new("/bin/true")
                    .status()
                    .unwrap_or_else(|e| fail(format!("exec /bin/true: {e}")));
                if !status.success() {
                    fail(format!("/bin/true exited with {status}"));
                }
            }
        }
        // Listen on 127.0.0.1, then connect to it and accept `count` times.
        "connect-loop" => {
            let count: u64 = num(&args, 1, "count");
            let listener =
                TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| fail(format!("bind: {e}")));
            let addr = listener
                .local_addr()
                .unwrap_or_else(|e| fail(format!("local_addr: {e}")));
            for _ in 0..count {
                let client =
                    TcpStream::connect(addr).unwrap_or_else(|e| fail(format!("connect: {e}")));
                let (server, _) = listener
                    .accept()
                    .unwrap_or_else(|e| fail(format!("accept: {e}")));
                reset_on_close(&client);
                drop(client);
                drop(server);
            }
        }
        // Connect to ADDR, send a byte, read a byte.
        "connect" => {
            let addr = arg(&args, 1, "address");
            let mut stream =
                TcpStream::connect(&addr).unwrap_or_else(|e| fail(format!("connect {addr}: {e}")));
            let _ = stream.write_all(b"x");
            let _ = stream.read(&mut [0u8; 1]);
        }
        // Listen on ADDR, print the bound address, accept one connection and echo a byte.
        "accept-once" => {
            let addr = arg(&args, 1, "address");
            let listener =
                TcpListener::bind(&addr).unwrap_or_else(|e| fail(format!("bind {addr}: {e}")));
            let local = listener
                .local_addr()
                .unwrap_or_else(|e| fail(format!("local_addr: {e}")));
            println!("{local}");
            let _ = std::io::stdout().flush();
            let (mut stream, _) = listener
                .accept()
                .unwrap_or_else(|e| fail(format!("accept: {e}")));
            let mut byte = [0u8; 1];
            let _ = stream.read(&mut byte);
            let _ = stream.write_all(&byte);
        }
        other => fail(format!("unknown action `{other}`")),
    }
}
