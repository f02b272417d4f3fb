//! Proves the classical handshake and transport are byte-compatible with `snow`, an
//! independent Noise implementation, in both roles.

use qsc_channel::keys::StaticKeypair;
use qsc_channel::noise::{
    HandshakeMode, InitiatorStart, PROTOCOL_CLASSIC, ResponderStart, TransportKeys,
};

const PROLOGUE: &[u8] = b"QSC/\x01\x00";

fn snow_builder(secret: &[u8]) -> snow::Builder<'_> {
    let params: snow::params::NoiseParams = PROTOCOL_CLASSIC.parse().unwrap();
    snow::Builder::new(params)
        .local_private_key(secret)
        .prologue(PROLOGUE)
}

/// Checks transport messages both ways between our keys and snow's transport state.
fn check_transport(ours: &mut TransportKeys, theirs: &mut snow::TransportState) {
    let mut buf = vec![0u8; 70000];
    for round in 0..5u8 {
        let msg = vec![round; 100 + round as usize * 1000];

        let mut wire = msg.clone();
        ours.send.encrypt_with_ad(&[], &mut wire).unwrap();
        let n = theirs.read_message(&wire, &mut buf).unwrap();
        assert_eq!(
            &buf[..n],
            msg.as_slice(),
            "snow decrypts our transport message"
        );

        let n = theirs.write_message(&msg, &mut buf).unwrap();
        let mut wire = buf[..n].to_vec();
        ours.recv.decrypt_with_ad(&[], &mut wire).unwrap();
        assert_eq!(wire, msg, "we decrypt snow's transport message");
    }
    ours.send.rekey().unwrap();
    theirs.rekey_incoming();
    let mut wire = b"after rekey".to_vec();
    ours.send.encrypt_with_ad(&[], &mut wire).unwrap();
    let n = theirs.read_message(&wire, &mut buf).unwrap();
    assert_eq!(
        &buf[..n],
        b"after rekey",
        "rekey matches the spec's Rekey()"
    );
}

#[test]
fn our_initiator_with_snow_responder() {
    let agent = StaticKeypair::generate();
    let cortex = StaticKeypair::generate();
    let secret = cortex.secret_bytes();
    let mut responder = snow_builder(secret.as_slice()).build_responder().unwrap();
    let mut buf = vec![0u8; 65535];

    let (waiting, m1) =
        InitiatorStart::new(HandshakeMode::Classic, PROLOGUE, &agent, &cortex.public())
            .write_message1(b"agent hello")
            .unwrap();
    let n = responder.read_message(&m1, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"agent hello");
    assert_eq!(responder.get_remote_static().unwrap(), agent.public().0);

    let n = responder.write_message(b"cortex hello", &mut buf).unwrap();
    let (mut keys, payload) = waiting.read_message2(&buf[..n]).unwrap();
    assert_eq!(payload, b"cortex hello");
    assert_eq!(responder.get_handshake_hash(), keys.handshake_hash);

    let mut transport = responder.into_transport_mode().unwrap();
    check_transport(&mut keys, &mut transport);
}

#[test]
fn snow_initiator_with_our_responder() {
    let agent = StaticKeypair::generate();
    let cortex = StaticKeypair::generate();
    let secret = agent.secret_bytes();
    let mut initiator = snow_builder(secret.as_slice())
        .remote_public_key(&cortex.public().0)
        .build_initiator()
        .unwrap();
    let mut buf = vec![0u8; 65535];

    let n = initiator.write_message(b"agent hello", &mut buf).unwrap();
    let (received, payload) = ResponderStart::new(HandshakeMode::Classic, PROLOGUE, &cortex)
        .read_message1(&buf[..n])
        .unwrap();
    assert_eq!(payload, b"agent hello");
    assert_eq!(received.remote_static(), &agent.public());

    let (mut keys, m2) = received.write_message2(b"cortex hello").unwrap();
    let n = initiator.read_message(&m2, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"cortex hello");
    assert_eq!(initiator.get_handshake_hash(), keys.handshake_hash);

    let mut transport = initiator.into_transport_mode().unwrap();
    check_transport(&mut keys, &mut transport);
}

#[test]
fn snow_rejects_a_different_prologue() {
    let agent = StaticKeypair::generate();
    let cortex = StaticKeypair::generate();
    let secret = cortex.secret_bytes();
    let mut responder = snow_builder(secret.as_slice()).build_responder().unwrap();
    let (_, m1) = InitiatorStart::new(
        HandshakeMode::Classic,
        b"QSC/\x02\x00",
        &agent,
        &cortex.public(),
    )
    .write_message1(b"")
    .unwrap();
    let mut buf = vec![0u8; 65535];
    assert!(responder.read_message(&m1, &mut buf).is_err());
}
