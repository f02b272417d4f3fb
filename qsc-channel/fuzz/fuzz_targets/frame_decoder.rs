//! Feeds arbitrary bytes to the frame decoder and to both envelope parsers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qsc_channel::delivery::envelope::{AgentMessage, CortexMessage};
use qsc_channel::frame;

fuzz_target!(|data: &[u8]| {
    let max = 1 << 16;
    let mut rest = data;
    while let Ok(Some((raw, used))) = frame::decode(rest, max) {
        assert!(used <= rest.len() && used >= frame::MIN_FRAME_LEN);
        let _ = frame::FrameKind::from_byte(raw.ciphertext.first().copied().unwrap_or(0));
        rest = &rest[used..];
    }
    let _ = AgentMessage::decode(data);
    let _ = CortexMessage::decode(data);
    let _ = qsc_channel::delivery::envelope::decode_resume(data);
});
