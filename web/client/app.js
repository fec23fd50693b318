// Huitong meeting client: signalling protocol v1 (docs/signaling.md), two peer
// connections per participant (publish: we offer; subscribe: the server offers).
// Plain ES module, standard WebRTC APIs only, so Chromium and Firefox behave alike.

const SIGNAL_PATH = '/api/v1/signal';
const PING_INTERVAL_MS = 10_000;
const REQUEST_TIMEOUT_MS = 15_000;
const SUBSCRIBE_DEBOUNCE_MS = 250;

// 720p camera gives simulcast layers of 320x180, 640x360 and 1280x720.
const CAMERA_CONSTRAINTS = {
  width: { ideal: 1280 },
  height: { ideal: 720 },
  frameRate: { ideal: 30, max: 30 },
};
const AUDIO_CONSTRAINTS = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
const SIMULCAST = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
];
const SCREEN_ENCODING = [{ maxBitrate: 2_500_000 }];

const ERROR_TEXT = {
  bad_request: '请求无效 Bad request',
  unsupported_version: '协议版本不支持 Unsupported protocol version',
  message_too_large: '消息过大 Message too large',
  not_joined: '尚未加入会议 Not joined',
  already_joined: '已加入会议 Already joined',
  unknown_meeting: '会议不存在 Meeting not found',
  wrong_passcode: '会议密码错误 Wrong or missing passcode',
  meeting_locked: '会议已锁定 The meeting is locked',
  meeting_cancelled: '会议已取消 The meeting was cancelled',
  directory_only: '仅限通讯录成员，请先登录 Directory members only: log in first',
  no_open_signin: '当前没有进行中的签到 No sign-in is open',
  meeting_full: '会议人数已满 The meeting is full',
  not_host: '仅主持人可操作 Only the host can do this',
  unknown_participant: '参会人不存在 Unknown participant',
  unknown_track: '媒体流不存在 Unknown track',
  sdp_rejected: '媒体协商失败 Media negotiation failed',
  rate_limited: '操作过于频繁 Too many requests',
  internal: '服务器错误 Server error',
  timeout: '服务器无响应 The server did not answer',
  disconnected: '连接已断开 Connection lost',
};

class SignalError extends Error {
  constructor(code, message) {
    super(message || code);
    this.code = code;
  }
}

function errorText(err) {
  if (err instanceof SignalError) {
    const known = ERROR_TEXT[err.code];
    return known ? `${known} (${err.code}: ${err.message})` : `${err.code}: ${err.message}`;
  }
  if (err && err.name === 'NotAllowedError') return '未获得摄像头/麦克风权限 Camera/microphone permission denied';
  if (err && err.name === 'NotFoundError') return '未找到摄像头/麦克风 No camera/microphone found';
  return String((err && err.message) || err);
}

// ---------------------------------------------------------------- state

const state = {
  participant: null, // own id
  role: null,
  meeting: null, // {number, locked}
  participants: new Map(), // id -> Participant
  tracks: new Map(), // track id -> Track (+ mid when carried by the subscribe pc)
  speaker: null,
  quality: new Map(), // participant id -> quality stat
  micMuted: false,
  cameraMuted: false,
  sharing: false,
  view: localStorage.getItem('huitong.view') === 'speaker' ? 'speaker' : 'gallery',
  joined: false,
};

const timings = {
  joinClickedAt: null,
  joinedAt: null,
  firstRemoteFrameAt: null,
  firstFrameBy: {}, // participant id -> performance.now() of its first rendered frame
};

let ws = null;
let pingTimer = null;
let leaving = false;
let reqSeq = 0;
const pending = new Map(); // request id -> {resolve, reject, timer}

let pubPc = null;
let subPc = null;
let pubQueue = Promise.resolve();
let subQueue = Promise.resolve();
const pub = { mic: null, camera: null, screen: null }; // transceivers
let micTrack = null;
let cameraTrack = null;
let screenTrack = null;
let subTracksByMid = new Map(); // tracks of the last server offer, by mid
let sessionGen = 0; // bumped on teardown so late async work of an old session stops

// ---------------------------------------------------------------- DOM helpers

const $ = (sel) => document.querySelector(sel);

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) node.append(c);
  return node;
}

function showJoinError(text) {
  const p = $('#join-error');
  p.textContent = text;
  p.hidden = !text;
}

let bannerTimer = null;
function banner(text, sticky = false) {
  const b = $('#banner');
  b.textContent = text;
  b.hidden = false;
  clearTimeout(bannerTimer);
  if (!sticky) bannerTimer = setTimeout(() => { b.hidden = true; }, 6000);
}

// ---------------------------------------------------------------- signalling

function signalUrl() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}${SIGNAL_PATH}`;
}

function openSocket() {
  return new Promise((resolve, reject) => {
    const sock = new WebSocket(signalUrl());
    let opened = false;
    sock.onopen = () => { opened = true; resolve(sock); };
    sock.onmessage = (ev) => onMessage(ev.data);
    sock.onerror = () => { if (!opened) reject(new SignalError('disconnected', 'WebSocket failed')); };
    sock.onclose = (ev) => {
      if (!opened) reject(new SignalError('disconnected', `WebSocket closed (${ev.code})`));
      if (sock === ws) onSocketClosed(ev);
    };
    ws = sock;
  });
}

function send(msg) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
}

function request(msg) {
  const id = `c${++reqSeq}`;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      pending.delete(id);
      reject(new SignalError('timeout', `no reply to ${msg.type}`));
    }, REQUEST_TIMEOUT_MS);
    pending.set(id, { resolve, reject, timer });
    send({ ...msg, id });
  });
}

function settle(msg) {
  if (msg.re === undefined || msg.re === null) return false;
  const p = pending.get(String(msg.re));
  if (!p) return false;
  pending.delete(String(msg.re));
  clearTimeout(p.timer);
  if (msg.type === 'error') p.reject(new SignalError(msg.code, msg.message));
  else p.resolve(msg);
  return true;
}

function onMessage(data) {
  let msg;
  try {
    msg = JSON.parse(data);
  } catch {
    console.warn('non-JSON signalling message', data);
    return;
  }
  if (!msg || typeof msg !== 'object') return;
  // State changes happen here, before any awaiting caller resumes, so that later
  // messages (e.g. the first subscribe offer right after `joined`) see them.
  switch (msg.type) {
    case 'joined': onJoined(msg); break;
    case 'offer': if (msg.pc === 'sub') onSubOffer(msg); break;
    case 'participant_joined': upsertParticipant(msg.participant); break;
    case 'participant_updated': upsertParticipant(msg.participant); break;
    case 'participant_left': removeParticipant(msg.participant, msg.reason); break;
    case 'track_published': onTrackPublished(msg.track); break;
    case 'mcu_track': onMcuTrack(msg.track); break;
    case 'track_unpublished': state.tracks.delete(msg.track); render(); break;
    case 'speaking': state.speaker = msg.participant; render(); break;
    case 'quality': onQuality(msg.stats || []); break;
    case 'muted_by_host': onMutedByHost(msg); break;
    case 'removed': onRemoved(msg); break;
    case 'codec_request': onCodecRequest(msg); break;
    case 'meeting_updated': state.meeting = msg.meeting; render(); break;
    case 'error':
      if (!settle(msg)) banner(errorText(new SignalError(msg.code, msg.message)));
      return;
    default: break;
  }
  settle(msg);
}

function onSocketClosed(ev) {
  for (const [id, p] of pending) {
    clearTimeout(p.timer);
    p.reject(new SignalError('disconnected', `socket closed (${ev.code})`));
    pending.delete(id);
  }
  if (leaving || !state.joined) return;
  teardown();
  showJoinError(`${ERROR_TEXT.disconnected} (${ev.code}${ev.reason ? `: ${ev.reason}` : ''})`);
}

// ---------------------------------------------------------------- join / leave

async function getLocalMedia() {
  // Ask for both together (one permission prompt); fall back to each alone so a
  // missing camera does not keep someone out of the meeting.
  try {
    const s = await navigator.mediaDevices.getUserMedia({ audio: AUDIO_CONSTRAINTS, video: CAMERA_CONSTRAINTS });
    return { audio: s.getAudioTracks()[0] || null, video: s.getVideoTracks()[0] || null, error: null };
  } catch (bothErr) {
    let audio = null;
    let video = null;
    try { audio = (await navigator.mediaDevices.getUserMedia({ audio: AUDIO_CONSTRAINTS })).getAudioTracks()[0]; } catch { /* reported below */ }
    try { video = (await navigator.mediaDevices.getUserMedia({ video: CAMERA_CONSTRAINTS })).getVideoTracks()[0]; } catch { /* reported below */ }
    return { audio, video, error: audio && video ? null : bothErr };
  }
}

async function onJoinSubmit(ev) {
  ev.preventDefault();
  timings.joinClickedAt = performance.now();
  timings.joinedAt = null;
  timings.firstRemoteFrameAt = null;
  timings.firstFrameBy = {};
  showJoinError('');
  const meeting = $('#meeting').value.trim();
  const name = $('#name').value.trim();
  const passcode = $('#passcode').value;
  const create = $('#create').checked;
  if (!meeting || !name) {
    showJoinError('请填写会议号和姓名 Enter the meeting number and your name');
    return;
  }
  const button = $('#join');
  button.disabled = true;
  leaving = false;
  // Camera start-up and the WebSocket handshake overlap: both are on the join path.
  const mediaP = getLocalMedia();
  try {
    await openSocket();
    const msg = { type: 'join', v: 1, meeting, name, create };
    if (passcode) msg.passcode = passcode;
    const token = joinToken();
    if (token) msg.token = token;
    await request(msg);
    timings.joinedAt = performance.now();
    localStorage.setItem('huitong.name', name);
    const media = await mediaP;
    if (media.error) banner(errorText(media.error));
    micTrack = media.audio;
    cameraTrack = media.video;
    state.cameraMuted = !cameraTrack;
    state.micMuted = !micTrack;
    render();
    await publish();
  } catch (err) {
    console.error('join failed', err);
    const media = await mediaP.catch(() => null);
    if (media) { media.audio?.stop(); media.video?.stop(); }
    if (state.joined) {
      banner(errorText(err), true);
    } else {
      leaving = true;
      teardown();
      showJoinError(errorText(err));
    }
  } finally {
    button.disabled = false;
  }
}

function onJoined(msg) {
  state.participant = msg.participant;
  state.role = msg.role;
  state.meeting = msg.meeting;
  state.participants = new Map((msg.participants || []).map((p) => [p.id, p]));
  state.tracks = new Map((msg.tracks || []).map((t) => [t.id, { ...t }]));
  state.speaker = null;
  state.quality = new Map();
  state.sharing = false;
  state.joined = true;
  $('#join-view').hidden = true;
  $('#meeting-view').hidden = false;
  clearInterval(pingTimer);
  pingTimer = setInterval(() => send({ type: 'ping' }), PING_INTERVAL_MS);
  syncRemoteMedia(); // an offer that came before `joined` may already carry media
}

function leave() {
  if (!state.joined) return;
  leaving = true;
  send({ type: 'leave' });
  teardown();
}

function onRemoved(msg) {
  leaving = true;
  teardown();
  showJoinError(`您已被移出会议 You were removed from the meeting${msg.reason ? ` (${msg.reason})` : ''}`);
}

function teardown() {
  sendCodec = 'h264';
  sessionGen += 1;
  clearInterval(pingTimer);
  pingTimer = null;
  for (const t of [micTrack, cameraTrack, screenTrack]) t?.stop();
  micTrack = cameraTrack = screenTrack = null;
  pubPc?.close();
  subPc?.close();
  pubPc = subPc = null;
  pub.mic = pub.camera = pub.screen = null;
  pubQueue = Promise.resolve();
  subQueue = Promise.resolve();
  subTracksByMid = new Map();
  const sock = ws;
  ws = null;
  if (sock && sock.readyState <= WebSocket.OPEN) {
    // Give the `leave` frame a moment to flush; the server closes the socket itself.
    setTimeout(() => sock.close(), 500);
  }
  state.joined = false;
  state.participant = null;
  state.role = null;
  state.participants = new Map();
  state.tracks = new Map();
  state.speaker = null;
  state.sharing = false;
  for (const tile of tiles.values()) tile.el.remove();
  tiles.clear();
  for (const a of audioEls.values()) a.remove();
  audioEls.clear();
  subscribePrefs.clear();
  $('#meeting-view').hidden = true;
  $('#join-view').hidden = false;
  $('#banner').hidden = true;
}

// ---------------------------------------------------------------- participants

function upsertParticipant(p) {
  if (!p || !p.id) return;
  state.participants.set(p.id, p);
  if (p.id === state.participant) state.role = p.role;
  syncRemoteMedia();
}

function removeParticipant(id, reason) {
  state.participants.delete(id);
  state.quality.delete(id);
  for (const [tid, t] of state.tracks) if (t.participant === id) state.tracks.delete(tid);
  if (state.speaker === id) state.speaker = null;
  syncRemoteMedia();
  console.info('participant left', id, reason);
}

function onQuality(stats) {
  for (const s of stats) if (s && s.participant) state.quality.set(s.participant, s);
  updateQualityIndicators();
}

function onMutedByHost(msg) {
  if (msg.source === 'mic' || !msg.source) {
    setMicMuted(true, false);
    banner('主持人已将您静音 The host muted your microphone');
  }
}

// ---------------------------------------------------------------- publish pc

// The video codec we publish in: H.264 unless the server asked for VP8 because some
// subscriber cannot decode H.264 (Firefox without the OpenH264 plug-in). Sticky for
// the session, so a later screen share starts in VP8 too.
let sendCodec = 'h264';

function preferCodecs(transceiver) {
  if (!transceiver || typeof transceiver.setCodecPreferences !== 'function') return;
  const caps = window.RTCRtpSender?.getCapabilities?.('video') || window.RTCRtpReceiver?.getCapabilities?.('video');
  if (!caps) return;
  // H.264 constrained baseline with packetization-mode=1 first, then other H.264
  // (mode 1), then VP8 (or VP8 first after the fallback); RTX stays so that
  // retransmissions keep working.
  const vp8First = sendCodec === 'vp8';
  const rank = (c) => {
    const mime = c.mimeType.toLowerCase();
    const fmtp = (c.sdpFmtpLine || '').toLowerCase();
    if (mime === 'video/h264') {
      if (!fmtp.includes('packetization-mode=1')) return 3;
      return (/profile-level-id=42e0/.test(fmtp) ? 0 : 1) + (vp8First ? 1 : 0);
    }
    if (mime === 'video/vp8') return vp8First ? 0 : 2;
    if (mime === 'video/rtx') return 4;
    return -1;
  };
  const codecs = caps.codecs.filter((c) => rank(c) >= 0).sort((a, b) => rank(a) - rank(b));
  if (!codecs.some((c) => rank(c) <= 2)) return;
  try {
    transceiver.setCodecPreferences(codecs);
  } catch (err) {
    console.warn('setCodecPreferences failed; using the browser default order', err);
  }
}

async function publish() {
  pubPc = new RTCPeerConnection({ iceServers: [], bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' });
  const pc = pubPc;
  pc.onicecandidate = (ev) => sendCandidate('pub', ev.candidate);
  pc.onconnectionstatechange = () => updateConnState();
  const stream = new MediaStream([micTrack, cameraTrack].filter(Boolean));
  // Both transceivers exist even without a device, so a later "camera on" is a
  // replaceTrack and not a renegotiation.
  pub.mic = pc.addTransceiver(micTrack || 'audio', { direction: 'sendonly', streams: [stream] });
  pub.camera = pc.addTransceiver(cameraTrack || 'video', {
    direction: 'sendonly',
    streams: [stream],
    sendEncodings: SIMULCAST.map((e) => ({ ...e })),
  });
  preferCodecs(pub.camera);
  await negotiatePub();
  if (!micTrack) send({ type: 'mute', source: 'mic', muted: true });
  if (!cameraTrack) send({ type: 'mute', source: 'camera', muted: true });
  render();
}

async function onCodecRequest(msg) {
  if (msg.codec !== 'vp8' || sendCodec === 'vp8') return;
  sendCodec = 'vp8';
  console.info('a subscriber cannot decode our video; publishing VP8');
  preferCodecs(pub.camera);
  if (pub.screen) preferCodecs(pub.screen);
  try {
    await negotiatePub();
    // The answer may still list H.264 first for an m-line that was negotiated before;
    // pinning the encodings' codec switches the encoder now (Chromium supports it).
    for (const t of [pub.camera, pub.screen]) await pinCodec(t?.sender, 'video/vp8');
  } catch (err) {
    console.warn('codec fallback failed', err);
  }
}

async function pinCodec(sender, mime) {
  if (!sender) return;
  const params = sender.getParameters();
  const codec = (params.codecs || []).find((c) => c.mimeType.toLowerCase() === mime);
  if (!codec || !params.encodings?.length) return;
  for (const e of params.encodings) e.codec = { mimeType: codec.mimeType, clockRate: codec.clockRate };
  try {
    await sender.setParameters(params);
  } catch (err) {
    console.warn('cannot pin the send codec', err);
  }
}

function publishedTracks() {
  const tracks = [];
  if (pub.mic?.mid) tracks.push({ mid: pub.mic.mid, kind: 'audio', source: 'mic' });
  if (pub.camera?.mid) tracks.push({ mid: pub.camera.mid, kind: 'video', source: 'camera' });
  if (pub.screen?.mid && state.sharing) tracks.push({ mid: pub.screen.mid, kind: 'video', source: 'screen' });
  return tracks;
}

function negotiatePub() {
  // One negotiation at a time: a screen share started while the first offer is in
  // flight waits for it.
  const run = async () => {
    const pc = pubPc;
    if (!pc) return;
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    const reply = await request({ type: 'offer', pc: 'pub', sdp: pc.localDescription.sdp, tracks: publishedTracks() });
    if (pc !== pubPc) return;
    await pc.setRemoteDescription({ type: 'answer', sdp: reply.sdp });
  };
  const p = pubQueue.then(run);
  pubQueue = p.catch(() => {});
  return p;
}

function sendCandidate(pc, cand) {
  // mDNS (.local) host candidates cannot be resolved by the server; it learns our
  // address from STUN checks anyway (peer-reflexive).
  if (!cand || !cand.candidate || cand.candidate.includes('.local')) return;
  send({ type: 'candidate', pc, candidate: cand.candidate });
}

async function setMicMuted(muted, notify = true) {
  if (!muted && !micTrack && pub.mic) {
    try {
      micTrack = (await navigator.mediaDevices.getUserMedia({ audio: AUDIO_CONSTRAINTS })).getAudioTracks()[0];
      await pub.mic.sender.replaceTrack(micTrack);
    } catch (err) {
      banner(errorText(err));
      return;
    }
  }
  state.micMuted = muted;
  if (micTrack) micTrack.enabled = !muted;
  if (notify) send({ type: 'mute', source: 'mic', muted });
  render();
}

async function setCameraMuted(muted) {
  if (!pub.camera) return;
  if (muted) {
    await pub.camera.sender.replaceTrack(null);
    cameraTrack?.stop(); // releases the device: the camera light goes off
    cameraTrack = null;
  } else {
    try {
      cameraTrack = (await navigator.mediaDevices.getUserMedia({ video: CAMERA_CONSTRAINTS })).getVideoTracks()[0];
      await pub.camera.sender.replaceTrack(cameraTrack);
    } catch (err) {
      banner(errorText(err));
      return;
    }
  }
  state.cameraMuted = muted;
  send({ type: 'mute', source: 'camera', muted });
  render();
}

async function startShare(streamOverride) {
  if (state.sharing || !pubPc) return;
  let stream = streamOverride;
  if (!stream) {
    try {
      stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 15, max: 30 } }, audio: false });
    } catch (err) {
      if (err && err.name !== 'NotAllowedError') banner(`无法共享屏幕 Cannot share the screen: ${errorText(err)}`);
      return;
    }
  }
  const track = stream.getVideoTracks()[0];
  if (!track) return;
  if ('contentHint' in track) track.contentHint = 'detail';
  track.addEventListener('ended', () => stopShare());
  screenTrack = track;
  // A fresh transceiver per share: the server sees a new m-line and a new SSRC
  // rather than a reused one whose track it already dropped.
  if (pub.screen) pub.screen.direction = 'inactive';
  pub.screen = pubPc.addTransceiver(track, {
    direction: 'sendonly',
    streams: [stream],
    sendEncodings: SCREEN_ENCODING.map((e) => ({ ...e })),
  });
  preferCodecs(pub.screen);
  state.sharing = true;
  render();
  try {
    await negotiatePub();
  } catch (err) {
    banner(`无法共享屏幕 Cannot share the screen: ${errorText(err)}`);
    await stopShare(false);
  }
}

async function stopShare(notify = true) {
  if (!state.sharing) return;
  state.sharing = false;
  const tr = pub.screen;
  const track = screenTrack;
  screenTrack = null;
  if (notify && tr?.mid) send({ type: 'unpublish', mid: tr.mid });
  try { await tr?.sender.replaceTrack(null); } catch { /* pc already closed */ }
  track?.stop();
  render();
}

// ---------------------------------------------------------------- subscribe pc

function ensureSubPc() {
  if (subPc) return subPc;
  // As the answerer we follow the server's BUNDLE group; max-bundle here would make
  // an offer without one fail outright.
  subPc = new RTCPeerConnection({ iceServers: [] });
  subPc.onicecandidate = (ev) => sendCandidate('sub', ev.candidate);
  subPc.onconnectionstatechange = () => updateConnState();
  subPc.ontrack = () => syncRemoteMedia();
  return subPc;
}

function onSubOffer(msg) {
  const tracks = Array.isArray(msg.tracks) ? msg.tracks : [];
  // The server may send the first offer just before `joined`: it belongs to this
  // session all the same, so only a teardown (new session) discards it.
  const session = sessionGen;
  const run = async () => {
    if (session !== sessionGen || !ws) return;
    const pc = ensureSubPc();
    // The mid map must be in place before setRemoteDescription fires `track`.
    subTracksByMid = new Map(tracks.filter((t) => t.mid != null).map((t) => [String(t.mid), t]));
    for (const t of tracks) {
      // A stale m-line of someone who already left must not bring them back.
      if (!state.participants.has(t.participant)) continue;
      const known = state.tracks.get(t.id);
      state.tracks.set(t.id, { ...known, ...t });
    }
    try {
      await pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
      if (pc !== subPc) return;
      send({ type: 'answer', pc: 'sub', sdp: pc.localDescription.sdp });
    } catch (err) {
      console.error('subscribe offer failed', err);
      banner(`${ERROR_TEXT.sdp_rejected}: ${errorText(err)}`);
      return;
    }
    syncRemoteMedia();
  };
  subQueue = subQueue.then(run).catch((err) => console.error(err));
}

// Which receiver carries which remote track, from the last offer's `tracks`.
function remoteReceivers() {
  const out = [];
  if (!subPc) return out;
  for (const tr of subPc.getTransceivers()) {
    if (tr.mid == null || tr.stopped) continue;
    const info = subTracksByMid.get(String(tr.mid));
    if (!info || !tr.receiver.track) continue;
    // Only people in the meeting are seen and heard, whatever the last offer still carries.
    if (!state.participants.has(info.participant)) continue;
    if (tr.currentDirection && !tr.currentDirection.includes('recv')) continue;
    out.push({ info, track: tr.receiver.track, mid: String(tr.mid) });
  }
  return out;
}

function syncRemoteMedia() {
  const wantedAudio = new Set();
  for (const { info, track } of remoteReceivers()) {
    if (info.kind !== 'audio') continue;
    wantedAudio.add(info.id);
    let a = audioEls.get(info.id);
    if (!a) {
      a = h('audio', { autoplay: true, 'data-track': info.id, 'data-participant': info.participant });
      audioEls.set(info.id, a);
      $('#audio-sink').append(a);
    }
    if (a.srcObject?.getTracks()[0] !== track) {
      a.srcObject = new MediaStream([track]);
      a.play().catch(() => {});
    }
  }
  for (const [id, a] of audioEls) {
    if (!wantedAudio.has(id)) {
      a.srcObject = null;
      a.remove();
      audioEls.delete(id);
    }
  }
  render();
}

// ---------------------------------------------------------------- tiles

const tiles = new Map(); // "participant:source" -> tile
const audioEls = new Map(); // track id -> <audio>
const subscribePrefs = new Map(); // track id -> last sent preference key
let subscribeTimer = null;

const resizeObserver = new ResizeObserver(() => scheduleSubscribeUpdate());

function tileKey(pid, source) {
  return `${pid}:${source}`;
}

function makeTile(pid, source) {
  const video = h('video', { autoplay: true, playsinline: true, muted: true });
  video.muted = true; // the attribute alone does not mute in every browser
  const avatar = h('div', { class: 'avatar' });
  const name = h('span', { class: 'name' });
  const mic = h('span', { class: 'mic-off', title: '已静音 Muted', text: '🔇' });
  const quality = h('span', { class: 'quality', 'data-score': '' }, h('i'), h('i'), h('i'), h('i'), h('i'));
  const label = h('div', { class: 'label' }, quality, name, mic);
  const el = h('div', {
    class: `tile ${source}`,
    id: `tile-${pid}-${source}`,
    'data-participant': pid,
    'data-source': source,
  }, video, avatar, label);
  el.addEventListener('dblclick', () => {
    if (source === 'camera' && pid !== state.participant) {
      pinned = pinned === pid ? null : pid;
      render();
    }
  });
  const tile = { key: tileKey(pid, source), pid, source, el, video, avatar, name, mic, quality, trackId: null, mediaTrack: null };
  resizeObserver.observe(video);
  return tile;
}

let pinned = null;

function attachVideo(tile, mediaTrack, trackId) {
  if (tile.mediaTrack === mediaTrack) return;
  tile.mediaTrack = mediaTrack;
  tile.trackId = trackId;
  tile.video.srcObject = mediaTrack ? new MediaStream([mediaTrack]) : null;
  if (!mediaTrack) return;
  tile.video.play().catch(() => {});
  if (trackId) {
    watchFirstFrame(tile.video, tile.pid);
    scheduleSubscribeUpdate();
  }
}

function watchFirstFrame(video, pid) {
  let done = false;
  const mark = () => {
    if (done) return;
    done = true;
    const now = performance.now();
    if (timings.firstRemoteFrameAt === null) timings.firstRemoteFrameAt = now;
    if (timings.firstFrameBy[pid] === undefined) timings.firstFrameBy[pid] = now;
  };
  if (typeof video.requestVideoFrameCallback === 'function') video.requestVideoFrameCallback(() => mark());
  video.addEventListener('loadeddata', mark, { once: true });
}

// The MCU publishes its shared mix (`view: "mix"`) and one track per picture some
// participant asked for with `mcu_view`: show the mix, or our own picture if we asked.
function isOurMcuPicture(track) {
  if (!track.view) return true;
  return state.mcuTrack ? track.id === state.mcuTrack : track.view === 'mix';
}

function onTrackPublished(track) {
  state.tracks.set(track.id, { ...track });
  // Someone else's picture: do not let the SFU spend our downlink on it.
  if (track.kind === 'video' && !isOurMcuPicture(track)) send({ type: 'subscribe', track: track.id, quality: 'off' });
  render();
}

function onMcuTrack(track) {
  state.mcuTrack = track || null;
  for (const t of state.tracks.values()) {
    if (t.kind !== 'video' || !t.view) continue;
    send({ type: 'subscribe', track: t.id, quality: isOurMcuPicture(t) ? 'high' : 'off' });
  }
  render();
}

/** Asks the meeting's MCU for a picture of our own (`null` returns to the shared mix). */
function mcuView(view) {
  if (!view) state.mcuTrack = null;
  send({ type: 'mcu_view', ...(view ? { view } : {}) });
}

function wantedTiles() {
  const list = [];
  for (const t of state.tracks.values()) {
    if (t.kind === 'video' && t.source === 'screen' && state.participants.has(t.participant)) {
      list.push({ pid: t.participant, source: 'screen' });
    }
  }
  if (state.sharing && state.participant) list.push({ pid: state.participant, source: 'screen' });
  if (state.participant) list.push({ pid: state.participant, source: 'camera' });
  for (const id of state.participants.keys()) if (id !== state.participant) list.push({ pid: id, source: 'camera' });
  return list;
}

function render() {
  if (!state.joined) return;
  const container = $('#tiles');
  const wanted = wantedTiles();
  const wantedKeys = new Set(wanted.map((w) => tileKey(w.pid, w.source)));
  for (const [key, tile] of tiles) {
    if (!wantedKeys.has(key)) {
      resizeObserver.unobserve(tile.video);
      tile.video.srcObject = null;
      tile.el.remove();
      tiles.delete(key);
    }
  }
  // Remote media by participant/source.
  const remote = new Map();
  for (const r of remoteReceivers()) {
    if (r.info.kind === 'video' && !isOurMcuPicture(r.info)) continue;
    if (r.info.kind === 'video') remote.set(tileKey(r.info.participant, r.info.source === 'screen' ? 'screen' : 'camera'), r);
  }
  if (pinned && !state.participants.has(pinned)) pinned = null;
  const mainKey = mainTileKey(wanted);
  wanted.forEach((w, i) => {
    const key = tileKey(w.pid, w.source);
    let tile = tiles.get(key);
    if (!tile) {
      tile = makeTile(w.pid, w.source);
      tiles.set(key, tile);
    }
    const self = w.pid === state.participant;
    const p = state.participants.get(w.pid) || {};
    if (self) {
      attachVideo(tile, w.source === 'screen' ? screenTrack : cameraTrack, null);
    } else {
      const r = remote.get(key);
      attachVideo(tile, r ? r.track : null, r ? r.info.id : null);
    }
    const camOff = w.source === 'camera' && (self ? state.cameraMuted || !cameraTrack : p.camera_muted || !tile.mediaTrack);
    tile.el.classList.toggle('self', self);
    tile.el.classList.toggle('video-off', camOff);
    tile.el.classList.toggle('speaking', w.source === 'camera' && state.speaker === w.pid);
    tile.el.classList.toggle('main', key === mainKey);
    const micMuted = self ? state.micMuted : !!p.mic_muted;
    tile.mic.hidden = w.source !== 'camera' || !micMuted;
    const displayName = p.name || (self ? $('#name').value : w.pid);
    const suffix = [self ? '(我 me)' : '', p.role === 'host' ? '(主持人 host)' : '', w.source === 'screen' ? '的屏幕 screen' : ''].filter(Boolean).join(' ');
    tile.name.textContent = suffix ? `${displayName} ${suffix}` : displayName;
    tile.avatar.textContent = Array.from(displayName || '?')[0].toUpperCase();
    tile.el.style.order = String(key === mainKey ? -1 : i);
    if (tile.el.parentNode !== container) container.append(tile.el);
  });
  container.className = state.view;
  const n = wanted.length;
  const cols = Math.ceil(Math.sqrt(n)) || 1;
  container.style.setProperty('--cols', String(cols));
  container.style.setProperty('--rows', String(Math.ceil(n / cols) || 1));
  updateQualityIndicators();
  renderToolbar();
  renderPeople();
  scheduleSubscribeUpdate();
}

function mainTileKey(wanted) {
  if (state.view !== 'speaker') return null;
  const remoteScreen = wanted.find((w) => w.source === 'screen' && w.pid !== state.participant);
  if (remoteScreen) return tileKey(remoteScreen.pid, 'screen');
  if (pinned) return tileKey(pinned, 'camera');
  if (state.speaker && state.speaker !== state.participant && state.participants.has(state.speaker)) {
    lastRemoteSpeaker = state.speaker;
  }
  if (lastRemoteSpeaker && state.participants.has(lastRemoteSpeaker)) return tileKey(lastRemoteSpeaker, 'camera');
  const other = wanted.find((w) => w.source === 'camera' && w.pid !== state.participant);
  return tileKey((other || wanted[0] || {}).pid, 'camera');
}
let lastRemoteSpeaker = null;

function updateQualityIndicators() {
  for (const tile of tiles.values()) {
    const q = state.quality.get(tile.pid);
    const score = q && Number.isFinite(q.score) ? Math.max(0, Math.min(5, Math.round(q.score))) : '';
    tile.quality.dataset.score = String(score);
    tile.quality.title = q ? qualityTitle(q) : '网络质量未知 Network quality unknown';
  }
  for (const li of document.querySelectorAll('#people li')) {
    const q = state.quality.get(li.dataset.participant);
    const ind = li.querySelector('.quality');
    if (ind) {
      ind.dataset.score = q && Number.isFinite(q.score) ? String(Math.round(q.score)) : '';
      ind.title = q ? qualityTitle(q) : '';
    }
  }
}

function qualityTitle(q) {
  const parts = [`网络质量 Network ${q.score}/5`];
  if (q.rtt_ms != null) parts.push(`RTT ${Math.round(q.rtt_ms)} ms`);
  if (q.loss_up != null) parts.push(`上行丢包 loss up ${(q.loss_up * 100).toFixed(1)}%`);
  if (q.loss_down != null) parts.push(`下行丢包 loss down ${(q.loss_down * 100).toFixed(1)}%`);
  if (q.bitrate_down_kbps != null) parts.push(`${Math.round(q.bitrate_down_kbps)} kbit/s`);
  return parts.join(' · ');
}

function renderToolbar() {
  const mic = $('#mic');
  mic.dataset.on = String(!state.micMuted);
  mic.querySelector('span').textContent = state.micMuted ? '取消静音 Unmute' : '静音 Mute';
  const cam = $('#camera');
  cam.dataset.on = String(!state.cameraMuted);
  cam.querySelector('span').textContent = state.cameraMuted ? '开启摄像头 Start video' : '关闭摄像头 Stop video';
  const share = $('#share');
  share.dataset.on = String(state.sharing);
  share.querySelector('span').textContent = state.sharing ? '停止共享 Stop sharing' : '共享屏幕 Share screen';
  $('#view-toggle span').textContent = state.view === 'gallery' ? '演讲者视图 Speaker view' : '宫格视图 Gallery view';
  const isHost = state.role === 'host';
  $('#host-controls').hidden = !isHost;
  const locked = !!state.meeting?.locked;
  $('#lock').textContent = locked ? '解锁会议 Unlock' : '锁定会议 Lock';
  $('#lock').dataset.locked = String(locked);
  $('#lock-state').hidden = !locked;
  $('#meeting-title').textContent = `会议 Meeting ${state.meeting?.number ?? ''}`;
  document.body.dataset.role = state.role || '';
}

function renderPeople() {
  const ul = $('#people');
  const isHost = state.role === 'host';
  const items = [];
  for (const p of state.participants.values()) {
    const self = p.id === state.participant;
    const li = h('li', { 'data-participant': p.id },
      h('span', { class: 'quality', 'data-score': '' }, h('i'), h('i'), h('i'), h('i'), h('i')),
      h('span', { class: 'pname', text: `${p.name}${self ? ' (我 me)' : ''}${p.role === 'host' ? ' (主持人 host)' : ''}` }),
      h('span', { class: 'state', text: `${p.mic_muted ? '🔇' : '🎤'}${p.camera_muted ? ' 🚫📷' : ''}${p.sharing ? ' 🖥' : ''}` }));
    if (isHost && !self) {
      li.append(
        h('button', { type: 'button', 'data-action': 'mute', 'data-participant': p.id, text: '静音 Mute', onclick: () => hostAction('mute', p.id) }),
        h('button', { type: 'button', 'data-action': 'remove', 'data-participant': p.id, class: 'danger', text: '移出 Remove', onclick: () => hostAction('remove', p.id) }));
    }
    items.push(li);
  }
  ul.replaceChildren(...items);
  $('#people-count').textContent = `(${state.participants.size})`;
  // The layout choice only means something while the meeting has an MCU.
  const hasMcu = [...state.participants.values()].some((p) => p.kind === 'mcu');
  $('#mcu-layout-box').hidden = !hasMcu;
  if (!hasMcu) $('#mcu-layout').value = '';
}

async function hostAction(action, participant) {
  try {
    const msg = { type: 'host', action };
    if (participant) msg.participant = participant;
    await request(msg);
  } catch (err) {
    banner(errorText(err));
  }
}

function updateConnState() {
  const s = [pubPc?.connectionState, subPc?.connectionState].filter(Boolean);
  const bad = s.find((x) => x === 'failed' || x === 'disconnected');
  const el = $('#conn-state');
  el.textContent = bad ? `媒体连接中断 Media ${bad}` : '';
  el.className = bad ? 'error' : '';
}

// ---------------------------------------------------------------- subscribe preferences

function scheduleSubscribeUpdate() {
  clearTimeout(subscribeTimer);
  subscribeTimer = setTimeout(sendSubscribePrefs, SUBSCRIBE_DEBOUNCE_MS);
}

function sendSubscribePrefs() {
  if (!state.joined) return;
  const dpr = window.devicePixelRatio || 1;
  for (const tile of tiles.values()) {
    if (!tile.trackId) continue;
    const w = Math.round(tile.video.clientWidth * dpr);
    const hgt = Math.round(tile.video.clientHeight * dpr);
    let pref;
    if (w === 0 || hgt === 0) {
      pref = { quality: 'off' };
    } else {
      // Snap up to 16 px so that small resizes do not flood the server.
      pref = { quality: 'high', max_width: Math.ceil(w / 16) * 16, max_height: Math.ceil(hgt / 16) * 16 };
    }
    const key = JSON.stringify(pref);
    if (subscribePrefs.get(tile.trackId) === key) continue;
    subscribePrefs.set(tile.trackId, key);
    send({ type: 'subscribe', track: tile.trackId, ...pref });
  }
}

// ---------------------------------------------------------------- stats (test hook, also shown nowhere else)

async function stats() {
  const out = {};
  const pc = subPc;
  if (!pc) return out;
  const midByTrackId = new Map();
  for (const tr of pc.getTransceivers()) {
    if (tr.mid != null && tr.receiver.track) midByTrackId.set(tr.receiver.track.id, String(tr.mid));
  }
  const report = await pc.getStats();
  // A forwarding SFU may switch SSRC on a layer change, leaving more than one
  // inbound-rtp per mid: counters are summed, sizes come from the newest.
  const byMid = new Map();
  report.forEach((s) => {
    if (s.type !== 'inbound-rtp') return;
    const mid = s.mid != null ? String(s.mid) : midByTrackId.get(s.trackIdentifier);
    if (mid === undefined) return;
    const acc = byMid.get(mid) || { framesDecoded: 0, totalSamplesReceived: 0, bytesReceived: 0, frameWidth: 0, frameHeight: 0, last: -1 };
    acc.framesDecoded += s.framesDecoded || 0;
    acc.totalSamplesReceived += s.totalSamplesReceived || 0;
    acc.bytesReceived += s.bytesReceived || 0;
    const last = s.lastPacketReceivedTimestamp || 0;
    if (last >= acc.last && (s.frameWidth || acc.last < 0)) {
      acc.last = last;
      acc.frameWidth = s.frameWidth || 0;
      acc.frameHeight = s.frameHeight || 0;
    }
    byMid.set(mid, acc);
  });
  // Per track as well: the MCU publishes several video tracks (the mix, pictures of
  // their own), and per participant only the one this client shows is reported.
  out.tracks = {};
  for (const [mid, acc] of byMid) {
    const t = subTracksByMid.get(mid);
    if (!t) continue;
    out.tracks[t.id] = { kind: t.kind, framesDecoded: acc.framesDecoded, frameWidth: acc.frameWidth, frameHeight: acc.frameHeight };
    if (t.kind === 'video' && t.view && !isOurMcuPicture(t)) continue;
    const p = out[t.participant] || (out[t.participant] = {});
    if (t.kind === 'audio') {
      p.audio = { totalSamplesReceived: acc.totalSamplesReceived, bytesReceived: acc.bytesReceived };
    } else if (t.source === 'screen') {
      p.screen = { framesDecoded: acc.framesDecoded, frameWidth: acc.frameWidth, frameHeight: acc.frameHeight };
    } else {
      p.video = { framesDecoded: acc.framesDecoded, frameWidth: acc.frameWidth, frameHeight: acc.frameHeight };
    }
  }
  return out;
}

// What we send, per encoding: for diagnosing a subscriber that gets nothing.
async function pubStats() {
  const out = [];
  if (!pubPc) return out;
  const report = await pubPc.getStats();
  report.forEach((s) => {
    if (s.type !== 'outbound-rtp') return;
    out.push({
      mid: s.mid, rid: s.rid, kind: s.kind, bytesSent: s.bytesSent, framesEncoded: s.framesEncoded,
      frameWidth: s.frameWidth, frameHeight: s.frameHeight, qualityLimitationReason: s.qualityLimitationReason,
      encoderImplementation: s.encoderImplementation, codecId: s.codecId,
    });
  });
  return out;
}

function snapshot() {
  return {
    participant: state.participant,
    role: state.role,
    meeting: state.meeting,
    joined: state.joined,
    sharing: state.sharing,
    micMuted: state.micMuted,
    cameraMuted: state.cameraMuted,
    view: state.view,
    speaker: state.speaker,
    participants: [...state.participants.values()],
    tracks: [...state.tracks.values()],
    subscribed: [...subTracksByMid.values()],
    tiles: [...tiles.keys()],
    pubConnection: pubPc?.connectionState ?? null,
    subConnection: subPc?.connectionState ?? null,
    timings: { ...timings, firstFrameBy: { ...timings.firstFrameBy } },
  };
}

// A directory access token identifies the joiner in scheduled meetings. It comes in
// the URL fragment (never sent to any server in a request line or Referer) or from the
// admin console's session in this tab.
function joinToken() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get('token');
  return fromHash || sessionStorage.getItem('ht_access') || '';
}

async function signIn() {
  try {
    const r = await request({ type: 'sign_in' });
    banner(r.already ? '已签到 Already signed in' : (r.late ? '已签到（迟到）Signed in (late)' : '签到成功 Signed in'));
  } catch (err) {
    banner(errorText(err));
  }
}

// ---------------------------------------------------------------- wiring

function init() {
  document.body.append(h('div', { id: 'audio-sink', hidden: true }));
  const params = new URLSearchParams(location.search);
  if (params.get('meeting')) $('#meeting').value = params.get('meeting');
  $('#name').value = params.get('name') || localStorage.getItem('huitong.name') || '';
  $('#join-form').addEventListener('submit', onJoinSubmit);
  $('#mic').addEventListener('click', () => setMicMuted(!state.micMuted));
  $('#camera').addEventListener('click', () => setCameraMuted(!state.cameraMuted));
  $('#share').addEventListener('click', () => (state.sharing ? stopShare() : startShare()));
  $('#view-toggle').addEventListener('click', () => {
    state.view = state.view === 'gallery' ? 'speaker' : 'gallery';
    localStorage.setItem('huitong.view', state.view);
    render();
  });
  $('#people-toggle').addEventListener('click', () => { $('#people-panel').hidden = !$('#people-panel').hidden; });
  // A picture of our own from the MCU in that layout; "shared" returns to the meeting's mix.
  $('#mcu-layout').addEventListener('change', (ev) => mcuView(ev.target.value ? { layout: ev.target.value } : null));
  $('#mute-all').addEventListener('click', () => hostAction('mute_all'));
  $('#lock').addEventListener('click', () => hostAction(state.meeting?.locked ? 'unlock' : 'lock'));
  $('#sign-in').addEventListener('click', () => signIn());
  $('#leave').addEventListener('click', () => leave());
  window.addEventListener('pagehide', () => { if (state.joined) send({ type: 'leave' }); });
}

window.huitong = {
  state,
  timings,
  stats,
  pubStats,
  snapshot,
  startShare,
  stopShare,
  leave,
  setMicMuted,
  setCameraMuted,
  signIn,
  mcuView,
  // For diagnostics (tests, the console): the two peer connections.
  pcs: () => ({ pub: pubPc, sub: subPc }),
};

init();
