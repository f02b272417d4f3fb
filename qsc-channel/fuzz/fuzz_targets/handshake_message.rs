//! Feeds arbitrary bytes to the cortex's handshake parser (hello + Noise message 1) and to the
//! agent's message 2 parser. The first byte picks the parser, the rest is the message.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use qsc_channel::handshake::{HELLO_LEN, parse_hello};
use qsc_channel::keys::StaticKeypair;
use qsc_channel::noise::{HandshakeMode, InitiatorStart, ResponderStart};

fn cortex() -> &'static StaticKeypair {
    static KEY: OnceLock<StaticKeypair> = OnceLock::new();
    KEY.get_or_init(StaticKeypair::generate)
}

fn agent() -> &'static StaticKeypair {
    static KEY: OnceLock<StaticKeypair> = OnceLock::new();
    KEY.get_or_init(StaticKeypair::generate)
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, message)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => {
            if let Ok((hello, noise)) = parse_hello(message) {
                let prologue = &message[..HELLO_LEN];
                let _ = ResponderStart::new(hello.mode, prologue, cortex()).read_message1(noise);
            }
        }
        1 => {
            for mode in [HandshakeMode::Classic, HandshakeMode::Hybrid] {
                let _ = ResponderStart::new(mode, b"QSC/\x01\x00", cortex()).read_message1(message);
            }
        }
        _ => {
            // Message 2 parsing needs a live initiator; the classical one is cheap to create.
            if let Ok((waiting, _)) =
                InitiatorStart::new(HandshakeMode::Classic, b"", agent(), &cortex().public())
                    .write_message1(b"")
            {
                let _ = waiting.read_message2(message);
            }
        }
    }
});
