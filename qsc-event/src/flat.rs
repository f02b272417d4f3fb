//! One-pass decoding of the flat event JSON.
//!
//! The derived `Deserialize` of [`Event`] (`#[serde(flatten)]` around the internally tagged
//! [`EventKind`]) buffers every field into serde's generic content twice before building the
//! kind's struct. Events as every QSC component writes them carry the envelope fields and the
//! `"kind"` tag before the kind's own fields, so this decoder reads the envelope, then hands
//! the rest of the object straight to the kind's struct, picking out any envelope field that
//! still follows. Whatever it does not handle (a kind's field before the tag, an escaped key,
//! an unknown tag, any error) it leaves to the derived decoder, which has the last word: both
//! accept the same documents and produce the same [`Event`].

use serde::Deserializer;
use serde::de::value::{BorrowedStrDeserializer, MapAccessDeserializer};
use serde::de::{DeserializeSeed, Error as _, MapAccess, Visitor};

use crate::{Event, EventKind, Source};

/// Decodes one event, the fast way when possible.
pub(crate) fn decode(bytes: &[u8]) -> Result<Event, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    if let Ok(Some(event)) = de.deserialize_map(FlatVisitor)
        && de.end().is_ok()
    {
        return Ok(event);
    }
    serde_json::from_slice(bytes)
}

/// The envelope fields seen so far.
#[derive(Default)]
struct Envelope {
    schema: Option<u16>,
    host_id: Option<String>,
    source: Option<Source>,
    seq: Option<u64>,
    time_ns: Option<u64>,
    mono_ns: Option<Option<u64>>,
}

fn set_once<T, E: serde::de::Error>(
    slot: &mut Option<T>,
    value: T,
    field: &'static str,
) -> Result<(), E> {
    if slot.replace(value).is_some() {
        return Err(E::duplicate_field(field));
    }
    Ok(())
}

impl Envelope {
    /// Reads the value of `key` if it is an envelope field; `Ok(false)` leaves it unread.
    fn take<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "schema" => set_once(&mut self.schema, map.next_value()?, "schema")?,
            "host_id" => set_once(&mut self.host_id, map.next_value()?, "host_id")?,
            "source" => set_once(&mut self.source, map.next_value()?, "source")?,
            "seq" => set_once(&mut self.seq, map.next_value()?, "seq")?,
            "time_ns" => set_once(&mut self.time_ns, map.next_value()?, "time_ns")?,
            "mono_ns" => set_once(&mut self.mono_ns, map.next_value()?, "mono_ns")?,
            "kind" => return Err(A::Error::duplicate_field("kind")),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn finish(self, kind: EventKind) -> Option<Event> {
        Some(Event {
            schema: self.schema?,
            host_id: self.host_id?,
            source: self.source?,
            seq: self.seq?,
            time_ns: self.time_ns?,
            mono_ns: self.mono_ns.flatten(),
            kind,
        })
    }
}

/// `Some(event)` when the one-pass decode applies, `None` to fall back.
struct FlatVisitor;

impl<'de> Visitor<'de> for FlatVisitor {
    type Value = Option<Event>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a flat QSC event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut envelope = Envelope::default();
        while let Some(key) = map.next_key::<&'de str>()? {
            if key == "kind" {
                let tag: &'de str = map.next_value()?;
                let rest = KindFields {
                    map: &mut map,
                    envelope: &mut envelope,
                };
                let Some(kind) =
                    EventKind::deserialize_tagged(tag, MapAccessDeserializer::new(rest))
                else {
                    return Ok(None);
                };
                return Ok(envelope.finish(kind?));
            }
            if !envelope.take(key, &mut map)? {
                return Ok(None);
            }
        }
        Ok(None)
    }
}

/// The object's entries after the tag, minus envelope fields (stored into `envelope`).
struct KindFields<'m, A> {
    map: &'m mut A,
    envelope: &'m mut Envelope,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for KindFields<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        while let Some(key) = self.map.next_key::<&'de str>()? {
            if !self.envelope.take(key, self.map)? {
                return seed
                    .deserialize(BorrowedStrDeserializer::new(key))
                    .map(Some);
            }
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Heartbeat, ProcessExec, ProcessInfo};

    fn one_pass(text: &str) -> Option<Event> {
        serde_json::Deserializer::from_str(text)
            .deserialize_map(FlatVisitor)
            .ok()
            .flatten()
    }

    #[test]
    fn what_qsc_writes_takes_the_one_pass_path() {
        let exec = Event::new(
            "web-01",
            Source::Alpha,
            3,
            EventKind::ProcessExec(ProcessExec {
                process: ProcessInfo {
                    pid: 9,
                    comm: "sh".into(),
                    ..Default::default()
                },
                filename: "/bin/sh".into(),
                argv: vec!["sh".into()],
                folder_world_writable: None,
            }),
        );
        let mut beat = Event::new(
            "web-01",
            Source::Beta,
            4,
            EventKind::Heartbeat(Heartbeat {
                version: "1".into(),
                uptime_s: 2,
                active_hooks: vec!["exec".into()],
            }),
        );
        beat.mono_ns = Some(77);
        for event in [exec, beat] {
            assert_eq!(one_pass(&event.to_json()), Some(event));
        }
    }

    #[test]
    fn other_layouts_fall_back() {
        let fields_first = r#"{"version":"1","uptime_s":1,"kind":"heartbeat","schema":1,"host_id":"h","source":"alpha","seq":1,"time_ns":1}"#;
        let unknown_tag =
            r#"{"schema":1,"host_id":"h","source":"alpha","seq":1,"time_ns":1,"kind":"nope"}"#;
        for text in [fields_first, unknown_tag] {
            assert_eq!(one_pass(text), None, "{text}");
        }
        assert!(decode(fields_first.as_bytes()).is_ok());
        assert!(decode(unknown_tag.as_bytes()).is_err());
    }
}
