//! Meetings and their participants. The hub owns who is in which meeting, names, roles,
//! mute and lock state, and the track list clients see; it relays SFU events to the
//! right sessions. Its lock is never held across an await.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use serde_json::Value;
use sfu::{
    ParticipantId, PcRole, Preference, QualityPref, SfuEvent, SfuHandle, TrackDecl, TrackId,
    TrackSource,
};
use tokio::sync::mpsc;

use crate::SignalError;
use crate::directory::{
    DirectoryRole, Identity, JoinVerdict, MeetingDirectory, SignInReceipt, SignInWho,
};
use crate::protocol::{
    HostAction, Kind, McuOptions, McuView, MeetingWire, MemberKind, ParticipantWire, Pc,
    QualityWire, QualityWireStat, ServerMsg, Source, TrackWire,
};

/// A meeting that exists from start-up (until admin-api provides scheduled meetings).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct MeetingSeed {
    pub number: String,
    #[serde(default)]
    pub passcode: Option<String>,
    /// Give this meeting an MCU from its first participant on (overrides `mcu_auto`).
    #[serde(default)]
    pub mcu: Option<McuOptions>,
}

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// Let `join` with `create: true` open a meeting under an unused number.
    pub adhoc_meetings: bool,
    /// Meetings that always exist.
    pub meetings: Vec<MeetingSeed>,
    /// Give every meeting an MCU (with these options) when its first person joins.
    pub mcu_auto: Option<McuOptions>,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            adhoc_meetings: true,
            meetings: vec![],
            mcu_auto: None,
        }
    }
}

/// What the hub asks of whoever runs MCUs (`huitong serve`: an in-process supervisor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum McuRequest {
    /// The meeting wants an MCU with these options; if one runs, it re-lays-out.
    Start {
        meeting: String,
        options: McuOptions,
    },
    /// The meeting no longer wants its MCU (host stopped it, or no person is left).
    Stop { meeting: String },
}

/// What a session receives from the hub.
#[derive(Debug)]
pub enum Outgoing {
    Msg(ServerMsg),
    /// Close the connection (removed by the host).
    Close,
}

struct Member {
    name: String,
    /// A service participant (the MCU): never host, not counted as a person.
    kind: MemberKind,
    /// The directory user behind this seat (joined with a valid access token).
    identity: Option<Identity>,
    /// May become host: anyone in an ad-hoc meeting, only the scheduled host and
    /// co-hosts in a meeting from the directory.
    may_host: bool,
    mic_muted: bool,
    camera_muted: bool,
    tx: mpsc::UnboundedSender<Outgoing>,
    /// `joined` has been sent. Until then the SFU may already offer the subscribe pc;
    /// those messages wait in `early` so the client always sees `joined` first.
    ready: bool,
    early: Vec<ServerMsg>,
}

struct Meeting {
    passcode: Option<String>,
    /// Admission is decided by the directory (a scheduled meeting), not by `passcode`.
    scheduled: bool,
    locked: bool,
    persistent: bool,
    host: Option<ParticipantId>,
    members: BTreeMap<ParticipantId, Member>,
    tracks: BTreeMap<TrackId, TrackWire>,
    /// Options of the MCU this meeting asked for, while it wants one.
    mcu: Option<McuOptions>,
    /// From the seed: start an MCU when the first person joins.
    mcu_seed: Option<McuOptions>,
}

impl Meeting {
    fn new(
        passcode: Option<String>,
        scheduled: bool,
        persistent: bool,
        mcu_seed: Option<McuOptions>,
    ) -> Self {
        Meeting {
            passcode: passcode.filter(|p| !p.is_empty()),
            scheduled,
            locked: false,
            persistent,
            host: None,
            members: BTreeMap::new(),
            tracks: BTreeMap::new(),
            mcu: None,
            mcu_seed,
        }
    }

    /// The longest-present member who may take the chair (service members never do).
    fn next_host(&self) -> Option<ParticipantId> {
        self.members
            .iter()
            .find(|(_, mem)| mem.may_host)
            .map(|(p, _)| *p)
    }

    fn has_people(&self) -> bool {
        self.members.values().any(|m| m.kind == MemberKind::User)
    }

    fn wire(&self, number: &str) -> MeetingWire {
        MeetingWire {
            number: number.to_string(),
            locked: self.locked,
        }
    }

    fn participant(&self, pid: ParticipantId) -> Option<ParticipantWire> {
        let m = self.members.get(&pid)?;
        Some(ParticipantWire {
            id: pid_wire(pid),
            name: m.name.clone(),
            role: if self.host == Some(pid) {
                "host"
            } else {
                "participant"
            },
            mic_muted: m.mic_muted,
            camera_muted: m.camera_muted,
            sharing: self
                .tracks
                .values()
                .any(|t| t.participant == pid_wire(pid) && t.source == Source::Screen),
            kind: (m.kind == MemberKind::Mcu).then_some("mcu"),
        })
    }

    fn broadcast(&mut self, msg: &ServerMsg, except: Option<ParticipantId>) {
        for (pid, m) in &mut self.members {
            if Some(*pid) != except {
                m.deliver(msg.clone());
            }
        }
    }

    /// News of track `t`: for everyone, or for its owner and audience only.
    fn tell_audience(&mut self, t: &TrackWire, msg: &ServerMsg) {
        match t.audience.as_deref() {
            None => self.broadcast(msg, None),
            Some(a) => {
                for p in [Some(a), Some(t.participant.as_str())]
                    .into_iter()
                    .flatten()
                {
                    if let Some(pid) = parse_pid(p) {
                        self.send(pid, msg.clone());
                    }
                }
            }
        }
    }

    fn send(&mut self, pid: ParticipantId, msg: ServerMsg) {
        if let Some(m) = self.members.get_mut(&pid) {
            m.deliver(msg);
        }
    }
}

impl Member {
    fn deliver(&mut self, msg: ServerMsg) {
        if self.ready {
            let _ = self.tx.send(Outgoing::Msg(msg));
        } else {
            self.early.push(msg);
        }
    }
}

pub fn pid_wire(p: ParticipantId) -> String {
    format!("p{}", p.0)
}

fn parse_pid(s: &str) -> Option<ParticipantId> {
    s.strip_prefix('p')?.parse().ok().map(ParticipantId)
}

fn kind_wire(k: sfu::MediaKind) -> Kind {
    if k == sfu::MediaKind::Audio {
        Kind::Audio
    } else {
        Kind::Video
    }
}

fn source_wire(s: TrackSource) -> Source {
    match s {
        TrackSource::Mic => Source::Mic,
        TrackSource::Camera => Source::Camera,
        TrackSource::Screen => Source::Screen,
    }
}

fn source_sfu(s: Source) -> TrackSource {
    match s {
        Source::Mic => TrackSource::Mic,
        Source::Camera => TrackSource::Camera,
        Source::Screen => TrackSource::Screen,
    }
}

#[derive(Default)]
struct Inner {
    meetings: HashMap<String, Meeting>,
    /// participant → meeting number
    seats: HashMap<ParticipantId, String>,
}

pub struct Hub {
    sfu: SfuHandle,
    cfg: HubConfig,
    directory: OnceLock<Arc<dyn MeetingDirectory>>,
    inner: Mutex<Inner>,
    next_pid: AtomicU64,
    mcu: Mutex<Option<mpsc::UnboundedSender<McuRequest>>>,
}

/// A join request, validated by the session.
pub struct JoinRequest {
    pub meeting: String,
    pub passcode: Option<String>,
    /// An access token from the directory; identifies the joiner.
    pub token: Option<String>,
    pub name: String,
    pub create: bool,
    /// `Mcu` only from trusted connections: skips the directory, passcode and lock, and
    /// never becomes host.
    pub kind: MemberKind,
}

impl Hub {
    /// Creates the hub and starts relaying `events` from the SFU.
    pub fn start(
        sfu: SfuHandle,
        events: mpsc::UnboundedReceiver<SfuEvent>,
        cfg: HubConfig,
    ) -> Arc<Hub> {
        let mut inner = Inner::default();
        for s in &cfg.meetings {
            inner.meetings.insert(
                s.number.clone(),
                Meeting::new(s.passcode.clone(), false, true, s.mcu.clone()),
            );
        }
        let hub = Arc::new(Hub {
            sfu,
            cfg,
            directory: OnceLock::new(),
            inner: Mutex::new(inner),
            next_pid: AtomicU64::new(1),
            mcu: Mutex::new(None),
        });
        tokio::spawn(relay(Arc::downgrade(&hub), events));
        hub
    }

    pub fn sfu(&self) -> &SfuHandle {
        &self.sfu
    }

    /// Where MCU start/stop requests go from now on. Without a taker, `host` `mcu` is
    /// refused with `unavailable`.
    pub fn mcu_requests(&self) -> mpsc::UnboundedReceiver<McuRequest> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.mcu.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        rx
    }

    fn request_mcu(&self, req: McuRequest) -> Result<(), SignalError> {
        let g = self.mcu.lock().unwrap_or_else(|e| e.into_inner());
        match g.as_ref() {
            Some(tx) if tx.send(req).is_ok() => Ok(()),
            _ => Err(SignalError::Unavailable("this node runs no MCU".into())),
        }
    }

    /// Lets the directory decide admission to its scheduled meetings and take sign-ins.
    /// Set once at start-up; later calls are ignored.
    pub fn set_directory(&self, directory: Arc<dyn MeetingDirectory>) {
        let _ = self.directory.set(directory);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock is a bug elsewhere; the data is still consistent
        // enough to keep serving other meetings.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of meetings and participants, for metrics.
    pub fn census(&self) -> (usize, usize) {
        let g = self.lock();
        (
            g.meetings
                .values()
                .filter(|m| !m.members.is_empty())
                .count(),
            g.seats.len(),
        )
    }

    pub async fn join(
        &self,
        req: JoinRequest,
        tx: mpsc::UnboundedSender<Outgoing>,
        re: Option<Value>,
    ) -> Result<ParticipantId, SignalError> {
        let pid = ParticipantId(self.next_pid.fetch_add(1, Ordering::Relaxed));
        let service = req.kind != MemberKind::User;
        let verdict = match self.directory.get() {
            // A service member joins a meeting its people already hold; it has no token.
            Some(_) if service => JoinVerdict::NotScheduled,
            Some(d) => {
                d.check_join(
                    &req.meeting,
                    req.token.as_deref().or(req.passcode.as_deref()),
                )
                .await?
            }
            None => JoinVerdict::NotScheduled,
        };
        let (role, identity) = match verdict {
            JoinVerdict::Refused(e) => return Err(e),
            JoinVerdict::Allowed { role, identity } => (Some(role), identity),
            JoinVerdict::NotScheduled => (None, None),
        };
        let name = identity
            .as_ref()
            .map_or_else(|| req.name.clone(), |i| i.display_name.clone());
        {
            let mut g = self.lock();
            if role.is_some() {
                let m = g
                    .meetings
                    .entry(req.meeting.clone())
                    .or_insert_with(|| Meeting::new(None, true, false, None));
                m.scheduled = true;
            } else if !g.meetings.contains_key(&req.meeting) {
                if service || !(req.create && self.cfg.adhoc_meetings) {
                    return Err(SignalError::UnknownMeeting(req.meeting));
                }
                g.meetings.insert(
                    req.meeting.clone(),
                    Meeting::new(req.passcode.clone(), false, false, None),
                );
            }
            let Some(m) = g.meetings.get_mut(&req.meeting) else {
                return Err(SignalError::UnknownMeeting(req.meeting));
            };
            if let (false, false, Some(p)) = (service, m.scheduled, &m.passcode) {
                if req.passcode.as_deref() != Some(p.as_str()) {
                    return Err(SignalError::WrongPasscode);
                }
            }
            let may_host = !service
                && (!m.scheduled
                    || matches!(role, Some(DirectoryRole::Host | DirectoryRole::CoHost)));
            if m.locked && !service && !(m.scheduled && may_host) {
                return Err(SignalError::MeetingLocked);
            }
            // The scheduled host takes the chair even from a co-host who came first.
            if (m.host.is_none() && may_host) || role == Some(DirectoryRole::Host) {
                m.host = Some(pid);
            }
            m.members.insert(
                pid,
                Member {
                    name,
                    kind: req.kind,
                    identity,
                    may_host,
                    mic_muted: false,
                    camera_muted: false,
                    tx,
                    ready: false,
                    early: vec![],
                },
            );
            g.seats.insert(pid, req.meeting.clone());
        }
        if let Err(e) = self.sfu.join(req.meeting.clone(), pid).await {
            self.forget(pid);
            return Err(e.into());
        }
        let mut g = self.lock();
        let Some(m) = g.meetings.get_mut(&req.meeting) else {
            return Err(SignalError::Internal("meeting vanished during join".into()));
        };
        let me = m
            .participant(pid)
            .ok_or_else(|| SignalError::Internal("seat vanished during join".into()))?;
        let joined = ServerMsg::Joined {
            re,
            participant: pid_wire(pid),
            role: me.role,
            meeting: m.wire(&req.meeting),
            participants: m.members.keys().filter_map(|p| m.participant(*p)).collect(),
            tracks: m
                .tracks
                .values()
                .filter(|t| t.audience.as_ref().is_none_or(|a| *a == pid_wire(pid)))
                .cloned()
                .collect(),
        };
        if let Some(mem) = m.members.get_mut(&pid) {
            let _ = mem.tx.send(Outgoing::Msg(joined));
            mem.ready = true;
            for early in std::mem::take(&mut mem.early) {
                let _ = mem.tx.send(Outgoing::Msg(early));
            }
        }
        m.broadcast(&ServerMsg::ParticipantJoined { participant: me }, Some(pid));
        // The first person of a meeting configured for an MCU brings it in.
        let first_person = !service
            && !m
                .members
                .iter()
                .any(|(p, mem)| *p != pid && mem.kind == MemberKind::User);
        let auto = if first_person && m.mcu.is_none() {
            m.mcu_seed.clone().or_else(|| self.cfg.mcu_auto.clone())
        } else {
            None
        };
        if let Some(options) = &auto {
            m.mcu = Some(options.clone());
        }
        drop(g);
        if let Some(options) = auto {
            let start = McuRequest::Start {
                meeting: req.meeting.clone(),
                options,
            };
            if let Err(e) = self.request_mcu(start) {
                tracing::warn!(meeting = %req.meeting, error = %e, "meeting wants an MCU");
            }
        }
        tracing::info!(meeting = %req.meeting, participant = pid.0, "joined");
        Ok(pid)
    }

    /// Removes the seat without telling anyone (failed join).
    fn forget(&self, pid: ParticipantId) {
        let mut g = self.lock();
        if let Some(number) = g.seats.remove(&pid) {
            if let Some(m) = g.meetings.get_mut(&number) {
                m.members.remove(&pid);
                if m.host == Some(pid) {
                    m.host = m.next_host();
                }
            }
        }
    }

    /// Signs the participant in to the open sign-in of its meeting (roll call). Only
    /// meetings from the directory have sign-ins; repeating it changes nothing.
    pub async fn sign_in(
        &self,
        pid: ParticipantId,
        headcount: u32,
    ) -> Result<SignInReceipt, SignalError> {
        let Some(directory) = self.directory.get() else {
            return Err(SignalError::NoOpenSignIn);
        };
        let (number, who) = {
            let g = self.lock();
            let number = g.seats.get(&pid).cloned().ok_or(SignalError::NotJoined)?;
            let m = g.meetings.get(&number).ok_or(SignalError::NotJoined)?;
            if !m.scheduled {
                return Err(SignalError::NoOpenSignIn);
            }
            let mem = m.members.get(&pid).ok_or(SignalError::NotJoined)?;
            let who = match &mem.identity {
                Some(i) => SignInWho::User(i.user_id),
                None => SignInWho::Guest {
                    key: pid_wire(pid),
                    name: mem.name.clone(),
                },
            };
            (number, who)
        };
        directory
            .sign_in(&number, who, headcount.clamp(1, 10_000))
            .await
    }

    /// The participant left (or was removed, or its connection dropped).
    pub fn leave(&self, pid: ParticipantId, reason: &'static str) {
        self.sfu.leave(pid);
        let mut g = self.lock();
        let Some(number) = g.seats.remove(&pid) else {
            return;
        };
        let Some(m) = g.meetings.get_mut(&number) else {
            return;
        };
        m.members.remove(&pid);
        m.tracks.retain(|_, t| t.participant != pid_wire(pid));
        m.broadcast(
            &ServerMsg::ParticipantLeft {
                participant: pid_wire(pid),
                reason,
            },
            None,
        );
        if m.host == Some(pid) {
            // The longest-present participant who may host takes over, so an ad-hoc
            // meeting is never without host; a scheduled one waits for a (co-)host.
            m.host = m.next_host();
            if let Some(h) = m.host.and_then(|h| m.participant(h)) {
                m.broadcast(&ServerMsg::ParticipantUpdated { participant: h }, None);
            }
        }
        // The MCU mixes for people: when the last one leaves, it goes too.
        let stop_mcu = !m.has_people() && m.mcu.take().is_some();
        if m.members.is_empty() && !m.persistent {
            g.meetings.remove(&number);
        }
        drop(g);
        if stop_mcu {
            let _ = self.request_mcu(McuRequest::Stop {
                meeting: number.clone(),
            });
        }
        tracing::info!(meeting = %number, participant = pid.0, reason, "left");
    }

    /// `who` ("p7") when it is in the same meeting as `pid`.
    fn fellow_member(&self, pid: ParticipantId, who: &str) -> Result<ParticipantId, SignalError> {
        let g = self.lock();
        let number = g.seats.get(&pid).ok_or(SignalError::NotJoined)?;
        parse_pid(who)
            .filter(|p| g.seats.get(p) == Some(number))
            .ok_or_else(|| SignalError::UnknownParticipant(who.into()))
    }

    fn member_kind(&self, pid: ParticipantId) -> Option<MemberKind> {
        let g = self.lock();
        let number = g.seats.get(&pid)?;
        Some(g.meetings.get(number)?.members.get(&pid)?.kind)
    }

    /// A participant asks the meeting's MCU for a picture of its own (or, with `None`,
    /// no longer wants one). The MCU answers with `mcu_route`.
    pub fn mcu_view(&self, pid: ParticipantId, view: Option<McuView>) -> Result<(), SignalError> {
        let mut g = self.lock();
        let number = g.seats.get(&pid).cloned().ok_or(SignalError::NotJoined)?;
        let m = g.meetings.get_mut(&number).ok_or(SignalError::NotJoined)?;
        let mcu = m
            .members
            .iter()
            .find(|(_, mem)| mem.kind == MemberKind::Mcu)
            .map(|(p, _)| *p)
            .ok_or_else(|| SignalError::Unavailable("this meeting has no MCU".into()))?;
        m.send(
            mcu,
            ServerMsg::McuView {
                participant: pid_wire(pid),
                view,
            },
        );
        Ok(())
    }

    /// The MCU tells `participant` which of its tracks carries that participant's picture.
    pub fn mcu_route(
        &self,
        pid: ParticipantId,
        participant: &str,
        track: Option<String>,
    ) -> Result<(), SignalError> {
        let mut g = self.lock();
        let number = g.seats.get(&pid).cloned().ok_or(SignalError::NotJoined)?;
        let m = g.meetings.get_mut(&number).ok_or(SignalError::NotJoined)?;
        if m.members.get(&pid).map(|mem| mem.kind) != Some(MemberKind::Mcu) {
            return Err(SignalError::BadRequest(
                "`mcu_route` is for the meeting's MCU".into(),
            ));
        }
        let target = parse_pid(participant)
            .filter(|p| m.members.contains_key(p))
            .ok_or_else(|| SignalError::UnknownParticipant(participant.into()))?;
        m.send(target, ServerMsg::McuTrack { track });
        Ok(())
    }

    pub async fn publish(
        &self,
        pid: ParticipantId,
        sdp: String,
        tracks: Vec<crate::protocol::TrackDecl>,
    ) -> Result<String, SignalError> {
        // Only a service says what its tracks are and whom they are for; a person's
        // label would mislead others, and a person's audience would hide its media.
        let service = self.member_kind(pid) == Some(MemberKind::Mcu);
        let mut decls = Vec::with_capacity(tracks.len());
        for t in tracks {
            let audience = match t.audience.filter(|_| service) {
                None => None,
                Some(a) => Some(self.fellow_member(pid, &a)?),
            };
            decls.push(TrackDecl {
                mid: t.mid,
                kind: if t.kind == Kind::Audio {
                    sfu::MediaKind::Audio
                } else {
                    sfu::MediaKind::Video
                },
                source: source_sfu(t.source),
                label: t.view.filter(|v| service && !v.is_empty() && v.len() <= 64),
                audience,
            });
        }
        Ok(self.sfu.publish(pid, sdp, decls).await?)
    }

    pub async fn subscriber_answer(
        &self,
        pid: ParticipantId,
        sdp: String,
    ) -> Result<(), SignalError> {
        Ok(self.sfu.subscriber_answer(pid, sdp).await?)
    }

    pub async fn candidate(
        &self,
        pid: ParticipantId,
        pc: Pc,
        cand: String,
    ) -> Result<(), SignalError> {
        let role = if pc == Pc::Pub {
            PcRole::Publish
        } else {
            PcRole::Subscribe
        };
        Ok(self.sfu.add_candidate(pid, role, cand).await?)
    }

    pub async fn subscribe(
        &self,
        pid: ParticipantId,
        track: &str,
        quality: Option<QualityWire>,
        max_width: Option<u32>,
        max_height: Option<u32>,
    ) -> Result<(), SignalError> {
        let tid = TrackId::parse(track).ok_or_else(|| SignalError::UnknownTrack(track.into()))?;
        let quality = match quality.unwrap_or(QualityWire::High) {
            QualityWire::Off => QualityPref::Off,
            QualityWire::Low => QualityPref::Low,
            QualityWire::Medium => QualityPref::Medium,
            QualityWire::High => QualityPref::High,
        };
        self.sfu
            .set_preference(
                pid,
                tid,
                Preference {
                    quality,
                    max_width,
                    max_height,
                },
            )
            .await
            .map_err(|e| match e {
                sfu::SfuError::UnknownTrack => SignalError::UnknownTrack(track.into()),
                e => e.into(),
            })
    }

    pub async fn unpublish(&self, pid: ParticipantId, mid: String) -> Result<(), SignalError> {
        self.sfu
            .unpublish(pid, mid.clone())
            .await
            .map_err(|e| match e {
                sfu::SfuError::UnknownTrack => SignalError::UnknownTrack(mid),
                e => e.into(),
            })
    }

    pub fn mute(&self, pid: ParticipantId, source: Source, muted: bool) {
        self.sfu.set_muted(pid, source_sfu(source), muted);
        let mut g = self.lock();
        let Some(number) = g.seats.get(&pid).cloned() else {
            return;
        };
        let Some(m) = g.meetings.get_mut(&number) else {
            return;
        };
        if let Some(me) = m.members.get_mut(&pid) {
            match source {
                Source::Mic => me.mic_muted = muted,
                Source::Camera => me.camera_muted = muted,
                Source::Screen => {}
            }
        }
        if let Some(p) = m.participant(pid) {
            m.broadcast(&ServerMsg::ParticipantUpdated { participant: p }, None);
        }
    }

    pub fn host_action(
        &self,
        pid: ParticipantId,
        action: HostAction,
        target: Option<&str>,
        mcu: Option<McuOptions>,
    ) -> Result<(), SignalError> {
        let mut g = self.lock();
        let number = g.seats.get(&pid).cloned().ok_or(SignalError::NotJoined)?;
        let m = g.meetings.get_mut(&number).ok_or(SignalError::NotJoined)?;
        if m.host != Some(pid) {
            return Err(SignalError::NotHost);
        }
        let target_pid = || -> Result<ParticipantId, SignalError> {
            let t = target
                .ok_or_else(|| SignalError::BadRequest("`participant` is required".into()))?;
            parse_pid(t)
                .filter(|p| m.members.contains_key(p))
                .ok_or_else(|| SignalError::UnknownParticipant(t.into()))
        };
        match action {
            HostAction::Mute | HostAction::MuteAll => {
                let victims: Vec<ParticipantId> = if action == HostAction::Mute {
                    vec![target_pid()?]
                } else {
                    m.members.keys().copied().filter(|p| *p != pid).collect()
                };
                for v in victims {
                    self.sfu.set_muted(v, TrackSource::Mic, true);
                    if let Some(mem) = m.members.get_mut(&v) {
                        mem.mic_muted = true;
                    }
                    m.send(
                        v,
                        ServerMsg::MutedByHost {
                            source: Source::Mic,
                        },
                    );
                    if let Some(p) = m.participant(v) {
                        m.broadcast(&ServerMsg::ParticipantUpdated { participant: p }, None);
                    }
                }
            }
            HostAction::Remove => {
                let v = target_pid()?;
                if let Some(mem) = m.members.get(&v) {
                    let _ = mem.tx.send(Outgoing::Msg(ServerMsg::Removed {
                        reason: "removed by the host".into(),
                    }));
                    let _ = mem.tx.send(Outgoing::Close);
                }
                drop(g);
                self.leave(v, "removed");
                return Ok(());
            }
            HostAction::Lock | HostAction::Unlock => {
                m.locked = action == HostAction::Lock;
                m.broadcast(
                    &ServerMsg::MeetingUpdated {
                        meeting: m.wire(&number),
                    },
                    None,
                );
            }
            HostAction::Mcu => {
                let options = mcu.unwrap_or_default();
                if options
                    .layout
                    .as_ref()
                    .is_some_and(|l| l.is_empty() || l.len() > 64)
                {
                    return Err(SignalError::BadRequest(
                        "`mcu.layout` is a layout name of 1–64 bytes".into(),
                    ));
                }
                let before = m.mcu.replace(options.clone());
                drop(g);
                let start = McuRequest::Start {
                    meeting: number.clone(),
                    options,
                };
                // Undo the bookkeeping when nobody runs MCUs here.
                return self.request_mcu(start).inspect_err(|_| {
                    let mut g = self.lock();
                    if let Some(m) = g.meetings.get_mut(&number) {
                        m.mcu = before;
                    }
                });
            }
            HostAction::McuStop => {
                if m.mcu.take().is_some() {
                    drop(g);
                    return self.request_mcu(McuRequest::Stop { meeting: number });
                }
            }
        }
        Ok(())
    }

    fn on_sfu_event(&self, ev: SfuEvent) {
        let mut g = self.lock();
        match ev {
            SfuEvent::SubscriberOffer {
                participant,
                sdp,
                tracks,
            } => {
                let Some(number) = g.seats.get(&participant).cloned() else {
                    return;
                };
                let Some(m) = g.meetings.get_mut(&number) else {
                    return;
                };
                let tracks = tracks
                    .into_iter()
                    .map(|t| TrackWire {
                        id: t.track.id.to_string(),
                        participant: pid_wire(t.track.owner),
                        kind: kind_wire(t.track.kind),
                        source: source_wire(t.track.source),
                        mid: Some(t.mid),
                        view: t.track.label,
                        audience: t.track.audience.map(pid_wire),
                    })
                    .collect();
                m.send(
                    participant,
                    ServerMsg::Offer {
                        pc: Pc::Sub,
                        sdp,
                        tracks,
                    },
                );
            }
            SfuEvent::TrackPublished { room, track } => {
                let Some(m) = g.meetings.get_mut(&room) else {
                    return;
                };
                let w = TrackWire {
                    id: track.id.to_string(),
                    participant: pid_wire(track.owner),
                    kind: kind_wire(track.kind),
                    source: source_wire(track.source),
                    mid: None,
                    view: track.label.clone(),
                    audience: track.audience.map(pid_wire),
                };
                m.tracks.insert(track.id, w.clone());
                m.tell_audience(&w, &ServerMsg::TrackPublished { track: w.clone() });
                if track.source == TrackSource::Screen {
                    if let Some(p) = m.participant(track.owner) {
                        m.broadcast(&ServerMsg::ParticipantUpdated { participant: p }, None);
                    }
                }
            }
            SfuEvent::TrackUnpublished { room, track, owner } => {
                let Some(m) = g.meetings.get_mut(&room) else {
                    return;
                };
                if let Some(t) = m.tracks.remove(&track) {
                    m.tell_audience(
                        &t,
                        &ServerMsg::TrackUnpublished {
                            track: t.id.clone(),
                        },
                    );
                    if t.source == Source::Screen {
                        if let Some(p) = m.participant(owner) {
                            m.broadcast(&ServerMsg::ParticipantUpdated { participant: p }, None);
                        }
                    }
                }
            }
            SfuEvent::ActiveSpeaker { room, participant } => {
                if let Some(m) = g.meetings.get_mut(&room) {
                    m.broadcast(
                        &ServerMsg::Speaking {
                            participant: participant.map(pid_wire),
                        },
                        None,
                    );
                }
            }
            SfuEvent::Quality { room, stats } => {
                if let Some(m) = g.meetings.get_mut(&room) {
                    let stats = stats
                        .into_iter()
                        .map(|s| QualityWireStat {
                            participant: pid_wire(s.participant),
                            score: s.score,
                            rtt_ms: s.rtt_ms,
                            loss_up: s.loss_up,
                            loss_down: s.loss_down,
                            bitrate_down_kbps: s.bitrate_down_kbps,
                        })
                        .collect();
                    m.broadcast(&ServerMsg::Quality { stats }, None);
                }
            }
            SfuEvent::MediaConnected { participant, pc } => {
                tracing::debug!(participant = participant.0, ?pc, "media connected");
            }
            SfuEvent::CodecUnsupported {
                publisher,
                track,
                codec,
            } => {
                let Some(number) = g.seats.get(&publisher).cloned() else {
                    return;
                };
                let Some(m) = g.meetings.get_mut(&number) else {
                    return;
                };
                let Some(source) = m.tracks.get(&track).map(|t| t.source) else {
                    return;
                };
                tracing::info!(participant = publisher.0, %codec, "a subscriber cannot decode the codec; asking for VP8");
                m.send(
                    publisher,
                    ServerMsg::CodecRequest {
                        track: track.to_string(),
                        source,
                        codec: "vp8",
                    },
                );
            }
            SfuEvent::MediaDisconnected { participant, pc } => {
                tracing::info!(participant = participant.0, ?pc, "media connection lost");
            }
        }
        drop(g);
    }
}

async fn relay(hub: std::sync::Weak<Hub>, mut events: mpsc::UnboundedReceiver<SfuEvent>) {
    while let Some(ev) = events.recv().await {
        let Some(hub) = hub.upgrade() else { return };
        hub.on_sfu_event(ev);
    }
}
