//! Guardian-Alpha kernel programs: classic tracepoints only (they work on every kernel we
//! target, including ones without kprobes, fentry or BPF-LSM). One module per hook family; all
//! records go to one ring buffer, and every record that does not fit is counted per CPU.
#![no_std]
#![no_main]

mod enforce;
mod file;
mod net;
mod privilege;
mod process;
mod record;

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
