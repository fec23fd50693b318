//! Wire types of signalling protocol v1 (docs/signaling.md). Parsing never panics: any
//! input becomes either a [`ClientMsg`] or a [`SignalError`] with a stable code.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::SignalError;

pub const PROTOCOL_VERSION: u32 = 1;
/// Largest accepted text frame.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pc {
    Pub,
    Sub,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Audio,
    Video,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Mic,
    Camera,
    Screen,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TrackDecl {
    pub mid: String,
    pub kind: Kind,
    pub source: Source,
    /// Which MCU view this track is (service members only; ignored from people).
    #[serde(default)]
    pub view: Option<String>,
    /// The one participant this track is for, e.g. the MCU's audio mix without that
    /// participant's own voice (service members only; ignored from people).
    #[serde(default)]
    pub audience: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QualityWire {
    Off,
    Low,
    Medium,
    High,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostAction {
    Mute,
    MuteAll,
    Remove,
    Lock,
    Unlock,
    /// Start (or re-lay-out) the meeting's MCU.
    Mcu,
    /// Stop the meeting's MCU.
    McuStop,
}

/// What kind of member joins: a person's client, or a service participant such as the MCU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberKind {
    #[default]
    User,
    Mcu,
}

/// Options of `host` `action: "mcu"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct McuOptions {
    /// Layout name (docs/mcu.md); the MCU's default when absent.
    #[serde(default)]
    pub layout: Option<String>,
}

/// The picture a participant wants from the meeting's MCU (its own layout, size, frame
/// rate and bitrate). Participants asking for equal settings share one encode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McuView {
    /// Layout name (docs/mcu.md); the MCU's layout when absent.
    #[serde(default)]
    pub layout: Option<String>,
    #[serde(default)]
    pub width: Option<u32>,
    #[serde(default)]
    pub height: Option<u32>,
    #[serde(default)]
    pub fps: Option<u32>,
    #[serde(default)]
    pub bitrate_bps: Option<u32>,
    /// Whether the participant's own venue appears in its picture (default yes).
    #[serde(default)]
    pub self_view: Option<bool>,
    /// Also send the meeting's sound mixed into one track, without the participant's
    /// own voice (default no: browsers get every voice from the SFU).
    #[serde(default)]
    pub audio: Option<bool>,
}

impl McuView {
    /// Refuses values no encoder takes, so the MCU never sees them.
    pub fn check(&self) -> Result<(), String> {
        if self
            .layout
            .as_ref()
            .is_some_and(|l| l.is_empty() || l.len() > 64)
        {
            return Err("`view.layout` is a layout name of 1–64 bytes".into());
        }
        if self.width.is_some_and(|w| !(64..=3840).contains(&w))
            || self.height.is_some_and(|h| !(64..=2160).contains(&h))
        {
            return Err("`view` size is 64–3840 × 64–2160".into());
        }
        if self.fps.is_some_and(|f| !(1..=60).contains(&f)) {
            return Err("`view.fps` is 1–60".into());
        }
        Ok(())
    }
}

/// A request from a client.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    Join {
        v: u32,
        meeting: String,
        #[serde(default)]
        passcode: Option<String>,
        #[serde(default)]
        token: Option<String>,
        name: String,
        #[serde(default)]
        create: bool,
        /// `mcu` only on trusted (in-process or service) connections.
        #[serde(default)]
        kind: MemberKind,
    },
    Offer {
        pc: Pc,
        sdp: String,
        #[serde(default)]
        tracks: Vec<TrackDecl>,
    },
    Answer {
        pc: Pc,
        sdp: String,
    },
    Candidate {
        pc: Pc,
        candidate: String,
    },
    Subscribe {
        track: String,
        #[serde(default)]
        quality: Option<QualityWire>,
        #[serde(default)]
        max_width: Option<u32>,
        #[serde(default)]
        max_height: Option<u32>,
    },
    Unpublish {
        mid: String,
    },
    Mute {
        source: Source,
        muted: bool,
    },
    Host {
        action: HostAction,
        #[serde(default)]
        participant: Option<String>,
        #[serde(default)]
        mcu: Option<McuOptions>,
    },
    /// Sign in to the meeting's open sign-in (roll call); a room system gives the
    /// number of people in the room.
    SignIn {
        #[serde(default)]
        headcount: Option<u32>,
    },
    /// Ask the meeting's MCU for a picture of one's own; no `view` ends it.
    McuView {
        #[serde(default)]
        view: Option<McuView>,
    },
    /// From the MCU only: `track` is the picture for `participant` (none: no picture).
    McuRoute {
        participant: String,
        #[serde(default)]
        track: Option<String>,
    },
    Ping,
    Leave,
}

/// A parsed request and the id to echo in its reply.
#[derive(Debug)]
pub struct Request {
    pub id: Option<Value>,
    pub msg: ClientMsg,
}

/// Parses one text frame. On failure returns the id (if one could be read) with the error.
pub fn parse(text: &str) -> Result<Request, (Option<Value>, SignalError)> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err((None, SignalError::TooLarge));
    }
    let v: Value = serde_json::from_str(text)
        .map_err(|e| (None, SignalError::BadRequest(format!("not JSON: {e}"))))?;
    let Value::Object(ref obj) = v else {
        return Err((
            None,
            SignalError::BadRequest("a message is a JSON object".into()),
        ));
    };
    let id = match obj.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= 64 => Some(Value::String(s.clone())),
        Some(Value::Number(n)) => Some(Value::Number(n.clone())),
        Some(_) => {
            return Err((
                None,
                SignalError::BadRequest("id must be a string of ≤ 64 chars or a number".into()),
            ));
        }
    };
    match obj.get("type") {
        Some(Value::String(_)) => {}
        _ => {
            return Err((
                id,
                SignalError::BadRequest("missing string field `type`".into()),
            ));
        }
    }
    let msg: ClientMsg = serde_json::from_value(v)
        .map_err(|e| (id.clone(), SignalError::BadRequest(e.to_string())))?;
    Ok(Request { id, msg })
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ParticipantWire {
    pub id: String,
    pub name: String,
    pub role: &'static str,
    pub mic_muted: bool,
    pub camera_muted: bool,
    pub sharing: bool,
    /// `"mcu"` for the meeting's mixing unit; absent for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TrackWire {
    pub id: String,
    pub participant: String,
    pub kind: Kind,
    pub source: Source,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mid: Option<String>,
    /// Set on the MCU's tracks: which view of the meeting this picture is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
    /// Set on tracks meant for one participant only: nobody else is told of them or
    /// offered them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MeetingWire {
    pub number: String,
    pub locked: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QualityWireStat {
    pub participant: String,
    pub score: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_up: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_down: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bitrate_down_kbps: Option<u32>,
}

/// A message to a client.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    Joined {
        #[serde(skip_serializing_if = "Option::is_none")]
        re: Option<Value>,
        participant: String,
        role: &'static str,
        meeting: MeetingWire,
        participants: Vec<ParticipantWire>,
        tracks: Vec<TrackWire>,
    },
    Answer {
        #[serde(skip_serializing_if = "Option::is_none")]
        re: Option<Value>,
        pc: Pc,
        sdp: String,
    },
    Offer {
        pc: Pc,
        sdp: String,
        tracks: Vec<TrackWire>,
    },
    ParticipantJoined {
        participant: ParticipantWire,
    },
    ParticipantLeft {
        participant: String,
        reason: &'static str,
    },
    ParticipantUpdated {
        participant: ParticipantWire,
    },
    TrackPublished {
        track: TrackWire,
    },
    TrackUnpublished {
        track: String,
    },
    Speaking {
        participant: Option<String>,
    },
    Quality {
        stats: Vec<QualityWireStat>,
    },
    MutedByHost {
        source: Source,
    },
    Removed {
        reason: String,
    },
    MeetingUpdated {
        meeting: MeetingWire,
    },
    Ok {
        #[serde(skip_serializing_if = "Option::is_none")]
        re: Option<Value>,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        re: Option<Value>,
    },
    /// Send this track in `codec` from now on: a subscriber cannot decode what it
    /// sends now.
    CodecRequest {
        track: String,
        source: Source,
        codec: &'static str,
    },
    SignedIn {
        #[serde(skip_serializing_if = "Option::is_none")]
        re: Option<Value>,
        late: bool,
        already: bool,
    },
    /// To the MCU: `participant` wants this picture (none: it no longer wants one).
    McuView {
        participant: String,
        view: Option<McuView>,
    },
    /// To a participant: the MCU track carrying its own picture (none: no picture).
    McuTrack {
        track: Option<String>,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        re: Option<Value>,
        code: &'static str,
        message: String,
    },
}

impl ServerMsg {
    pub fn error(re: Option<Value>, e: &SignalError) -> Self {
        ServerMsg::Error {
            re,
            code: e.code(),
            message: e.to_string(),
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"serialisation"}"#.into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_join_and_keeps_id() {
        let r = parse(r#"{"type":"join","id":7,"v":1,"meeting":"123","name":"张三","extra":1}"#)
            .unwrap();
        assert_eq!(r.id, Some(Value::from(7)));
        assert!(matches!(r.msg, ClientMsg::Join { v: 1, .. }));
    }

    #[test]
    fn numeric_ids_echo_exactly() {
        // Found by `cargo fuzz run signaling_message`: without correctly rounded float
        // parsing, this id came back as 3.5333333333333326e94, so the client could not
        // match the reply to its request.
        let lit = format!("35{}", "3".repeat(93));
        let r = parse(&format!(r#"{{"type":"ping","id":{lit}}}"#)).unwrap();
        let reply: Value = serde_json::from_str(&ServerMsg::Pong { re: r.id }.to_json()).unwrap();
        assert_eq!(reply["re"].as_f64(), Some(lit.parse::<f64>().unwrap()));
    }

    #[test]
    fn malformed_inputs_map_to_stable_codes() {
        let cases = [
            ("", "bad_request"),
            ("nope", "bad_request"),
            ("[]", "bad_request"),
            ("{}", "bad_request"),
            (r#"{"type":5}"#, "bad_request"),
            (r#"{"type":"fly"}"#, "bad_request"),
            (r#"{"type":"join","v":"1"}"#, "bad_request"),
            (r#"{"type":"mute","source":"mic"}"#, "bad_request"),
            (r#"{"type":"ping","id":{"a":1}}"#, "bad_request"),
        ];
        for (text, code) in cases {
            let (_, e) = parse(text).expect_err(text);
            assert_eq!(e.code(), code, "{text}");
        }
        let big = format!(
            r#"{{"type":"ping","pad":"{}"}}"#,
            "x".repeat(MAX_MESSAGE_BYTES)
        );
        assert_eq!(parse(&big).unwrap_err().1.code(), "message_too_large");
        let (id, _) = parse(r#"{"type":"fly","id":"abc"}"#).unwrap_err();
        assert_eq!(id, Some(Value::from("abc")));
    }

    #[test]
    fn server_messages_serialise_with_type_tags() {
        let m = ServerMsg::Speaking {
            participant: Some("p1".into()),
        };
        assert_eq!(m.to_json(), r#"{"type":"speaking","participant":"p1"}"#);
        let e = ServerMsg::error(Some(Value::from(3)), &SignalError::NotJoined);
        assert!(e.to_json().contains(r#""code":"not_joined""#));
    }
}
