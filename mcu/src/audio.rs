//! Audio mixing: decode every sender, mix N−1 for each active speaker and one shared mix
//! for everyone else (the top-K loudest), normalise levels, encode per receiving codec.
//!
//! Everything runs at 48 kHz mono in 20 ms frames; narrow-band and wide-band codecs are
//! resampled at the edges.

use std::collections::{BTreeMap, HashMap, VecDeque};

use media::codec::g711;
use media::codec::g722::{G722Decoder, G722Encoder};
use media::codec::opus::{FRAME_SAMPLES, OpusDecoder, OpusEncoder};

use crate::Error;
use crate::mode::ParticipantId;

/// A participant's audio codec (both directions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AudioCodec {
    /// Opus, 48 kHz mono.
    Opus,
    /// G.711 µ-law, 8 kHz.
    Pcmu,
    /// G.711 A-law, 8 kHz.
    Pcma,
    /// G.722, 16 kHz (64 kbit/s).
    G722,
}

impl AudioCodec {
    /// Sample rate of the codec's PCM side.
    pub fn pcm_rate(self) -> u32 {
        match self {
            Self::Opus => 48_000,
            Self::Pcmu | Self::Pcma => 8_000,
            Self::G722 => 16_000,
        }
    }

    fn factor(self) -> usize {
        (48_000 / self.pcm_rate()) as usize
    }
}

/// Integer-factor resampler: windowed-sinc low-pass, keeping history across frames.
#[derive(Debug, Clone)]
struct Resampler {
    factor: usize,
    taps: Vec<f32>,
    /// Last `taps.len()` samples at the high rate.
    hist: Vec<f32>,
}

impl Resampler {
    fn new(factor: usize) -> Self {
        let n = 16 * factor + 1;
        let fc = 0.45 / factor as f32;
        let mid = (n / 2) as f32;
        let mut taps: Vec<f32> = (0..n)
            .map(|i| {
                let x = i as f32 - mid;
                let sinc = if x == 0.0 {
                    2.0 * fc
                } else {
                    (2.0 * std::f32::consts::PI * fc * x).sin() / (std::f32::consts::PI * x)
                };
                let w = 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / (n - 1) as f32).cos();
                sinc * w
            })
            .collect();
        let sum: f32 = taps.iter().sum();
        for t in &mut taps {
            *t /= sum;
        }
        Self {
            factor,
            hist: vec![0.0; n],
            taps,
        }
    }

    fn push_filtered(&mut self, x: f32) -> f32 {
        self.hist.rotate_left(1);
        let last = self.hist.len() - 1;
        self.hist[last] = x;
        self.hist.iter().zip(&self.taps).map(|(h, t)| h * t).sum()
    }

    /// 48 kHz → codec rate.
    fn down(&mut self, input: &[f32]) -> Vec<i16> {
        let mut out = Vec::with_capacity(input.len() / self.factor);
        for (i, x) in input.iter().enumerate() {
            let y = self.push_filtered(*x);
            if i % self.factor == self.factor - 1 {
                out.push(y.round().clamp(-32768.0, 32767.0) as i16);
            }
        }
        out
    }

    /// Codec rate → 48 kHz (zero-stuffing, gain restored).
    fn up(&mut self, input: &[i16]) -> Vec<f32> {
        let mut out = Vec::with_capacity(input.len() * self.factor);
        let g = self.factor as f32;
        for s in input {
            out.push(self.push_filtered(f32::from(*s) * g));
            for _ in 1..self.factor {
                out.push(self.push_filtered(0.0));
            }
        }
        out
    }
}

/// Decoder for one sender, producing 48 kHz frames.
#[derive(Debug)]
pub struct AudioDecoder {
    codec: AudioCodec,
    opus: Option<OpusDecoder>,
    g722: G722Decoder,
    up: Option<Resampler>,
}

impl AudioDecoder {
    /// A decoder for `codec`.
    pub fn new(codec: AudioCodec) -> Result<Self, Error> {
        let opus = if codec == AudioCodec::Opus {
            Some(OpusDecoder::new(1)?)
        } else {
            None
        };
        let up = (codec.factor() > 1).then(|| Resampler::new(codec.factor()));
        Ok(Self {
            codec,
            opus,
            g722: G722Decoder::new(),
            up,
        })
    }

    /// Decodes one packet to 48 kHz samples.
    pub fn decode(&mut self, payload: &[u8]) -> Result<Vec<f32>, Error> {
        let mut pcm = Vec::new();
        match self.codec {
            AudioCodec::Opus => {
                if let Some(d) = self.opus.as_mut() {
                    pcm = d.decode(Some(payload))?;
                }
            }
            AudioCodec::Pcmu => g711::decode_ulaw(payload, &mut pcm),
            AudioCodec::Pcma => g711::decode_alaw(payload, &mut pcm),
            AudioCodec::G722 => self.g722.decode(payload, &mut pcm),
        }
        Ok(match self.up.as_mut() {
            Some(r) => r.up(&pcm),
            None => pcm.iter().map(|s| f32::from(*s)).collect(),
        })
    }
}

/// Encoder for one outgoing mix, taking 48 kHz frames.
#[derive(Debug)]
pub struct AudioEncoder {
    codec: AudioCodec,
    opus: Option<OpusEncoder>,
    g722: G722Encoder,
    down: Option<Resampler>,
}

impl AudioEncoder {
    /// An encoder for `codec` (Opus at 32 kbit/s).
    pub fn new(codec: AudioCodec) -> Result<Self, Error> {
        let opus = if codec == AudioCodec::Opus {
            Some(OpusEncoder::new(1, 32_000)?)
        } else {
            None
        };
        let down = (codec.factor() > 1).then(|| Resampler::new(codec.factor()));
        Ok(Self {
            codec,
            opus,
            g722: G722Encoder::new(),
            down,
        })
    }

    /// Encodes one 20 ms frame of 48 kHz samples.
    pub fn encode(&mut self, frame: &[f32]) -> Result<Vec<u8>, Error> {
        let pcm: Vec<i16> = match self.down.as_mut() {
            Some(r) => r.down(frame),
            None => frame
                .iter()
                .map(|s| s.round().clamp(-32768.0, 32767.0) as i16)
                .collect(),
        };
        let mut out = Vec::new();
        match self.codec {
            AudioCodec::Opus => {
                if let Some(e) = self.opus.as_mut() {
                    out = e.encode(&pcm)?;
                }
            }
            AudioCodec::Pcmu => g711::encode_ulaw(&pcm, &mut out),
            AudioCodec::Pcma => g711::encode_alaw(&pcm, &mut out),
            AudioCodec::G722 => self.g722.encode(&pcm, &mut out),
        }
        Ok(out)
    }
}

/// Mixer tuning.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixerConfig {
    /// How many of the loudest speakers are mixed (default 4).
    pub top_k: usize,
    /// Frames quieter than this RMS do not count as speech.
    pub silence_rms: f32,
    /// Level each speaker is normalised toward.
    pub target_rms: f32,
    /// Gain limits of the normalisation.
    pub min_gain: f32,
    /// Gain limits of the normalisation.
    pub max_gain: f32,
}

impl Default for MixerConfig {
    fn default() -> Self {
        Self {
            top_k: 4,
            silence_rms: 150.0,
            target_rms: 3000.0,
            min_gain: 0.25,
            max_gain: 4.0,
        }
    }
}

/// A language channel for simultaneous interpretation: the interpreter is taken out of
/// the floor mixes, and listeners who choose the language hear the interpreter over a
/// quiet floor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterpretationChannel {
    /// Language tag ("en", "bo", "mn").
    pub language: String,
    /// Who interprets into it.
    pub interpreter: ParticipantId,
}

/// One 20 ms round of mixing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Mixes {
    /// The speakers mixed this round, loudest first.
    pub active: Vec<ParticipantId>,
    /// Per active speaker: everyone else active (N−1).
    pub minus_one: BTreeMap<ParticipantId, Vec<f32>>,
    /// What every other participant hears.
    pub shared: Vec<f32>,
    /// Per interpretation language: interpreter plus the floor at −14 dB.
    pub languages: BTreeMap<String, Vec<f32>>,
}

/// The mixing core of one meeting.
#[derive(Debug)]
pub struct AudioMixer {
    cfg: MixerConfig,
    gains: HashMap<ParticipantId, f32>,
    interpretation: Vec<InterpretationChannel>,
}

fn rms(x: &[f32]) -> f32 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|s| s * s).sum::<f32>() / x.len() as f32).sqrt()
}

/// Soft knee above 24 000 so sums of loud speakers do not wrap or clip hard.
fn limit(x: f32) -> f32 {
    const KNEE: f32 = 24_000.0;
    const ROOM: f32 = 32_000.0 - KNEE;
    if x.abs() <= KNEE {
        x
    } else {
        x.signum() * (KNEE + ROOM * ((x.abs() - KNEE) / ROOM).tanh())
    }
}

impl AudioMixer {
    /// A mixer.
    pub fn new(cfg: MixerConfig) -> Self {
        Self {
            cfg,
            gains: HashMap::new(),
            interpretation: Vec::new(),
        }
    }

    /// Reserves a language channel.
    pub fn add_interpretation(&mut self, ch: InterpretationChannel) {
        self.interpretation.retain(|c| c.language != ch.language);
        self.interpretation.push(ch);
    }

    /// Interpretation channels configured.
    pub fn interpretation(&self) -> &[InterpretationChannel] {
        &self.interpretation
    }

    /// Forgets a participant who left.
    pub fn remove(&mut self, who: ParticipantId) {
        self.gains.remove(&who);
        self.interpretation.retain(|c| c.interpreter != who);
    }

    /// Mixes one frame. Inputs are 48 kHz frames of equal length (shorter ones are
    /// padded with silence); participants without a frame this round are silent.
    pub fn mix(&mut self, inputs: &[(ParticipantId, &[f32])]) -> Mixes {
        let n = FRAME_SAMPLES;
        let is_interpreter =
            |p: ParticipantId| self.interpretation.iter().any(|c| c.interpreter == p);
        let mut levels: Vec<(ParticipantId, f32)> = inputs
            .iter()
            .filter(|(p, _)| !is_interpreter(*p))
            .map(|(p, x)| (*p, rms(x)))
            .filter(|(_, r)| *r >= self.cfg.silence_rms)
            .collect();
        levels.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        levels.truncate(self.cfg.top_k);

        let cfg = self.cfg;
        let mut scaled = |p: ParticipantId, x: &[f32], level: f32| -> Vec<f32> {
            // Slow gain tracking: a loud room and a quiet phone come out alike without
            // pumping within a sentence.
            let want = (cfg.target_rms / level.max(1.0)).clamp(cfg.min_gain, cfg.max_gain);
            let g = self.gains.entry(p).or_insert(want);
            *g += 0.2 * (want - *g);
            let mut v: Vec<f32> = x.iter().map(|s| s * *g).collect();
            v.resize(n, 0.0);
            v
        };
        let find = |p: ParticipantId| {
            inputs
                .iter()
                .find(|(q, _)| *q == p)
                .map(|(_, x)| *x)
                .unwrap_or(&[])
        };
        let voices: Vec<(ParticipantId, Vec<f32>)> = levels
            .iter()
            .map(|(p, l)| (*p, scaled(*p, find(*p), *l)))
            .collect();

        let mut total = vec![0.0f32; n];
        for (_, v) in &voices {
            for (t, s) in total.iter_mut().zip(v) {
                *t += s;
            }
        }
        let minus_one = voices
            .iter()
            .map(|(p, v)| (*p, total.iter().zip(v).map(|(t, s)| limit(t - s)).collect()))
            .collect();
        let shared: Vec<f32> = total.iter().map(|t| limit(*t)).collect();
        let mut languages = BTreeMap::new();
        for ch in self.interpretation.clone() {
            let x = find(ch.interpreter);
            let v = scaled(ch.interpreter, x, rms(x).max(cfg.silence_rms));
            let floor = 10f32.powf(-14.0 / 20.0);
            languages.insert(
                ch.language,
                v.iter()
                    .zip(&total)
                    .map(|(i, t)| limit(i + floor * t))
                    .collect(),
            );
        }
        Mixes {
            active: voices.iter().map(|(p, _)| *p).collect(),
            minus_one,
            shared,
            languages,
        }
    }
}

/// An encoded mix for a set of receivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioPacket {
    /// Who gets it.
    pub to: Vec<ParticipantId>,
    /// In which codec.
    pub codec: AudioCodec,
    /// Payload of one 20 ms frame.
    pub payload: Vec<u8>,
}

/// Frames a sender may be ahead of the mixing clock; more means its clock runs fast or
/// a burst arrived late, and the oldest go so its delay stays bounded.
const MAX_QUEUED_FRAMES: usize = 3;

#[derive(Debug)]
struct AudioParticipant {
    codec: AudioCodec,
    decoder: AudioDecoder,
    language: Option<String>,
    /// Decoded frames not mixed yet: packets arrive with network jitter, the mix runs
    /// on a steady 20 ms clock.
    pending: VecDeque<Vec<f32>>,
    /// Whether a mix is encoded for it (a participant served directly by the SFU only
    /// speaks into the mix).
    receives: bool,
}

/// Audio of one meeting: per-sender decoders, the mixer, and encoders shared by every
/// receiver of the same mix and codec.
#[derive(Debug)]
pub struct AudioSession {
    mixer: AudioMixer,
    participants: BTreeMap<ParticipantId, AudioParticipant>,
    /// Encoders of the N−1 mixes, per speaker.
    own: HashMap<ParticipantId, AudioEncoder>,
    /// Encoders of the shared and language mixes, per (mix, codec).
    shared: HashMap<(Option<String>, AudioCodec), AudioEncoder>,
    /// Packets that failed to decode.
    pub decode_errors: u64,
}

impl AudioSession {
    /// A session.
    pub fn new(cfg: MixerConfig) -> Self {
        Self {
            mixer: AudioMixer::new(cfg),
            participants: BTreeMap::new(),
            own: HashMap::new(),
            shared: HashMap::new(),
            decode_errors: 0,
        }
    }

    /// The mixer (interpretation channels).
    pub fn mixer_mut(&mut self) -> &mut AudioMixer {
        &mut self.mixer
    }

    /// Adds a participant who sends and receives `codec`.
    pub fn add(&mut self, who: ParticipantId, codec: AudioCodec) -> Result<(), Error> {
        let decoder = AudioDecoder::new(codec)?;
        self.participants.insert(
            who,
            AudioParticipant {
                codec,
                decoder,
                language: None,
                pending: VecDeque::new(),
                receives: true,
            },
        );
        self.own.remove(&who);
        Ok(())
    }

    /// Whether `who` gets a mix (default yes). Speakers who get none cost no encoder.
    pub fn set_receives(&mut self, who: ParticipantId, receives: bool) -> Result<(), Error> {
        let p = self
            .participants
            .get_mut(&who)
            .ok_or(Error::UnknownParticipant(who))?;
        p.receives = receives;
        if !receives {
            self.own.remove(&who);
        }
        Ok(())
    }

    /// Whether `who` is in the session.
    pub fn contains(&self, who: ParticipantId) -> bool {
        self.participants.contains_key(&who)
    }

    /// Removes a participant.
    pub fn remove(&mut self, who: ParticipantId) {
        self.participants.remove(&who);
        self.own.remove(&who);
        self.mixer.remove(who);
    }

    /// A listener's choice of interpretation language (`None`: the floor).
    pub fn set_language(
        &mut self,
        who: ParticipantId,
        language: Option<String>,
    ) -> Result<(), Error> {
        let p = self
            .participants
            .get_mut(&who)
            .ok_or(Error::UnknownParticipant(who))?;
        p.language = language;
        Ok(())
    }

    /// One received packet (20 ms) from `who`. Undecodable packets are counted and
    /// treated as silence.
    pub fn push(&mut self, who: ParticipantId, payload: &[u8]) -> Result<(), Error> {
        let p = self
            .participants
            .get_mut(&who)
            .ok_or(Error::UnknownParticipant(who))?;
        match p.decoder.decode(payload) {
            Ok(pcm) => {
                if p.pending.len() >= MAX_QUEUED_FRAMES {
                    p.pending.pop_front();
                }
                p.pending.push_back(pcm);
            }
            Err(e) => {
                self.decode_errors += 1;
                tracing::debug!(participant = who, error = %e, "audio packet not decodable");
            }
        }
        Ok(())
    }

    /// Mixes and encodes one 20 ms round; every participant that receives is in exactly
    /// one packet's `to`.
    pub fn tick(&mut self) -> Result<(Mixes, Vec<AudioPacket>), Error> {
        let frames: Vec<(ParticipantId, Vec<f32>)> = self
            .participants
            .iter_mut()
            .filter_map(|(p, a)| a.pending.pop_front().map(|f| (*p, f)))
            .collect();
        let inputs: Vec<(ParticipantId, &[f32])> =
            frames.iter().map(|(p, f)| (*p, f.as_slice())).collect();
        let mixes = self.mixer.mix(&inputs);
        let mut packets = Vec::new();
        let mut groups: BTreeMap<(Option<String>, AudioCodec), Vec<ParticipantId>> =
            BTreeMap::new();
        for (who, p) in self.participants.iter().filter(|(_, p)| p.receives) {
            if let Some(mix) = mixes.minus_one.get(who) {
                let enc = match self.own.entry(*who) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(AudioEncoder::new(p.codec)?)
                    }
                };
                packets.push(AudioPacket {
                    to: vec![*who],
                    codec: p.codec,
                    payload: enc.encode(mix)?,
                });
                continue;
            }
            let lang = p
                .language
                .clone()
                .filter(|l| mixes.languages.contains_key(l));
            groups.entry((lang, p.codec)).or_default().push(*who);
        }
        for ((lang, codec), to) in groups {
            let mix = match &lang {
                Some(l) => &mixes.languages[l],
                None => &mixes.shared,
            };
            let enc = match self.shared.entry((lang, codec)) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(AudioEncoder::new(codec)?),
            };
            packets.push(AudioPacket {
                to,
                codec,
                payload: enc.encode(mix)?,
            });
        }
        Ok((mixes, packets))
    }

    /// Encoders alive (N−1 plus shared).
    pub fn encoder_count(&self) -> usize {
        self.own.len() + self.shared.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use media::tone::{sine, tone_share};

    fn decode_all(codec: AudioCodec, packets: &[Vec<u8>]) -> Vec<i16> {
        let mut out = Vec::new();
        let mut opus = OpusDecoder::new(1).expect("opus");
        let mut g722 = G722Decoder::new();
        for p in packets {
            match codec {
                AudioCodec::Opus => out.extend(opus.decode(Some(p)).expect("decode")),
                AudioCodec::Pcmu => g711::decode_ulaw(p, &mut out),
                AudioCodec::Pcma => g711::decode_alaw(p, &mut out),
                AudioCodec::G722 => g722.decode(p, &mut out),
            }
        }
        out
    }

    #[test]
    fn each_terminal_hears_the_others_and_not_itself() {
        let terminals = [
            (1u64, AudioCodec::Opus, 440.0),
            (2, AudioCodec::Pcmu, 700.0),
            (3, AudioCodec::G722, 1100.0),
        ];
        let mut session = AudioSession::new(MixerConfig::default());
        let mut senders = Vec::new();
        for (id, codec, _) in terminals {
            session.add(id, codec).expect("add");
            senders.push(AudioEncoder::new(codec).expect("enc"));
        }
        let mut received: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
        for frame in 0..50 {
            for ((id, _, f), enc) in terminals.iter().zip(&mut senders) {
                let pcm: Vec<f32> = sine(*f, 48_000, FRAME_SAMPLES, frame * FRAME_SAMPLES, 6000.0)
                    .iter()
                    .map(|s| f32::from(*s))
                    .collect();
                session
                    .push(*id, &enc.encode(&pcm).expect("encode"))
                    .expect("push");
            }
            let (mixes, packets) = session.tick().expect("tick");
            assert_eq!(mixes.active.len(), 3);
            for p in packets {
                assert_eq!(p.to.len(), 1, "everyone speaks: everyone gets an N-1 mix");
                received.entry(p.to[0]).or_default().push(p.payload);
            }
        }
        for (id, codec, own) in terminals {
            let pcm = decode_all(codec, &received[&id]);
            let rate = codec.pcm_rate();
            let tail = &pcm[pcm.len() / 2..];
            let own_share = tone_share(tail, rate, own);
            assert!(
                own_share < 0.01,
                "terminal {id} hears itself: {own_share:.3}"
            );
            for (other, _, f) in terminals.iter().filter(|t| t.0 != id) {
                let s = tone_share(tail, rate, *f);
                assert!(s > 0.2, "terminal {id} misses {other}'s tone ({s:.3})");
            }
        }
        assert_eq!(session.encoder_count(), 3);
    }

    #[test]
    fn top_k_shared_mix_for_listeners_and_interpretation_channel() {
        let mut m = AudioMixer::new(MixerConfig {
            top_k: 2,
            ..Default::default()
        });
        m.add_interpretation(InterpretationChannel {
            language: "en".into(),
            interpreter: 9,
        });
        let tone = |f: f64, a: f64| -> Vec<f32> {
            sine(f, 48_000, FRAME_SAMPLES, 0, a)
                .iter()
                .map(|s| f32::from(*s))
                .collect()
        };
        let (a, b, c, quiet, interp) = (
            tone(500.0, 8000.0),
            tone(900.0, 6000.0),
            tone(1300.0, 4000.0),
            tone(300.0, 50.0),
            tone(2000.0, 5000.0),
        );
        let mixes = m.mix(&[(1, &a), (2, &b), (3, &c), (4, &quiet), (9, &interp)]);
        assert_eq!(
            mixes.active,
            vec![1, 2],
            "two loudest, interpreter excluded"
        );
        let as_i16 = |v: &[f32]| v.iter().map(|s| *s as i16).collect::<Vec<_>>();
        let shared = as_i16(&mixes.shared);
        assert!(
            tone_share(&shared, 48_000, 500.0) > 0.2 && tone_share(&shared, 48_000, 900.0) > 0.2
        );
        assert!(
            tone_share(&shared, 48_000, 1300.0) < 0.01
                && tone_share(&shared, 48_000, 2000.0) < 0.01
        );
        let en = as_i16(&mixes.languages["en"]);
        assert!(
            tone_share(&en, 48_000, 2000.0) > 0.6,
            "interpreter dominates the language channel"
        );
        // Normalisation: both speakers come out near the target level despite 8000 vs 6000 in.
        let one = as_i16(&mixes.minus_one[&2]);
        let r = (one.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / one.len() as f64).sqrt();
        assert!((2500.0..3500.0).contains(&r), "normalised rms {r}");
        // Nobody speaking: silence, no active speakers.
        let silent = m.mix(&[(1, &quiet)]);
        assert!(silent.active.is_empty() && silent.shared.iter().all(|s| *s == 0.0));
    }

    #[test]
    fn hundred_participants_share_one_encoder_per_codec() {
        let mut s = AudioSession::new(MixerConfig::default());
        for id in 0..100u64 {
            let codec = if id % 2 == 0 {
                AudioCodec::Opus
            } else {
                AudioCodec::Pcma
            };
            s.add(id, codec).expect("add");
        }
        let mut enc = AudioEncoder::new(AudioCodec::Opus).expect("enc");
        let pcm: Vec<f32> = sine(600.0, 48_000, FRAME_SAMPLES, 0, 5000.0)
            .iter()
            .map(|s| f32::from(*s))
            .collect();
        for id in (0..10).step_by(2) {
            s.push(id, &enc.encode(&pcm).expect("e")).expect("push");
        }
        s.push(1, &[0xff; 3])
            .expect("garbage from a G.711 sender still decodes as samples");
        s.push(2, &[])
            .expect("empty opus packet is concealment or an error, not a panic");
        assert!(s.push(1000, &[1]).is_err());
        let (mixes, packets) = s.tick().expect("tick");
        assert_eq!(mixes.active.len(), 4);
        let reached: usize = packets.iter().map(|p| p.to.len()).sum();
        assert_eq!(reached, 100, "every participant gets exactly one stream");
        assert_eq!(packets.len(), 4 + 2, "4 N-1 mixes + one shared per codec");
    }

    #[test]
    fn jittered_packets_queue_and_non_receivers_cost_no_encoder() {
        let mut s = AudioSession::new(MixerConfig::default());
        s.add(1, AudioCodec::Opus).expect("add");
        s.add(2, AudioCodec::Opus).expect("add");
        s.set_receives(1, false).expect("known");
        let mut enc = AudioEncoder::new(AudioCodec::Opus).expect("enc");
        let frame = |n: usize| -> Vec<f32> {
            sine(500.0, 48_000, FRAME_SAMPLES, n * FRAME_SAMPLES, 6000.0)
                .iter()
                .map(|s| f32::from(*s))
                .collect()
        };
        // Two packets in one 20 ms round (network jitter): both are mixed, one per round.
        s.push(1, &enc.encode(&frame(0)).expect("e")).expect("push");
        s.push(1, &enc.encode(&frame(1)).expect("e")).expect("push");
        for round in 0..2 {
            let (mixes, packets) = s.tick().expect("tick");
            assert_eq!(mixes.active, vec![1], "round {round}");
            assert_eq!(packets.len(), 1);
            assert_eq!(packets[0].to, vec![2], "1 only speaks: no mix for it");
        }
        let (mixes, _) = s.tick().expect("tick");
        assert!(mixes.active.is_empty(), "the queue was two frames deep");
        // A burst beyond the bound keeps only the newest frames.
        for n in 0..10 {
            s.push(1, &enc.encode(&frame(n)).expect("e")).expect("push");
        }
        let mixed = (0..10)
            .filter(|_| !s.tick().expect("tick").0.active.is_empty())
            .count();
        assert_eq!(mixed, MAX_QUEUED_FRAMES);
        assert_eq!(
            s.encoder_count(),
            1,
            "only the shared mix for 2 was encoded"
        );
    }
}
