//! Opus at 48 kHz, 20 ms frames, mono or stereo, through libopus (bundled, built with cmake).

use crate::Error;

/// Samples per channel in one 20 ms frame at 48 kHz.
pub const FRAME_SAMPLES: usize = 960;
/// Opus always runs at 48 kHz here: the MCU mixes at that rate.
pub const SAMPLE_RATE: u32 = 48_000;
/// Upper bound of one encoded packet (RFC 6716 allows 1275 bytes per frame).
const MAX_PACKET: usize = 1500;

fn codec_err(e: opus::Error) -> Error {
    Error::Codec {
        codec: "opus",
        message: e.to_string(),
    }
}

fn channels(n: u8) -> Result<opus::Channels, Error> {
    match n {
        1 => Ok(opus::Channels::Mono),
        2 => Ok(opus::Channels::Stereo),
        _ => Err(Error::Config("opus channels must be 1 or 2")),
    }
}

/// An Opus encoder for voice (VoIP application, in-band FEC on).
pub struct OpusEncoder {
    inner: opus::Encoder,
    channels: u8,
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusEncoder")
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

impl OpusEncoder {
    /// `channels` is 1 or 2; `bitrate_bps` e.g. 32 000 for voice.
    pub fn new(channels_n: u8, bitrate_bps: i32) -> Result<Self, Error> {
        let mut inner =
            opus::Encoder::new(SAMPLE_RATE, channels(channels_n)?, opus::Application::Voip)
                .map_err(codec_err)?;
        inner
            .set_bitrate(opus::Bitrate::Bits(bitrate_bps))
            .map_err(codec_err)?;
        // In-band FEC lets a receiver rebuild a lost frame from the next one.
        inner.set_inband_fec(true).map_err(codec_err)?;
        Ok(Self {
            inner,
            channels: channels_n,
        })
    }

    /// Encodes one 20 ms frame of interleaved samples (`960 * channels`).
    pub fn encode(&mut self, pcm: &[i16]) -> Result<Vec<u8>, Error> {
        if pcm.len() != FRAME_SAMPLES * usize::from(self.channels) {
            return Err(Error::FrameSize("opus encoder takes 20 ms frames"));
        }
        self.inner.encode_vec(pcm, MAX_PACKET).map_err(codec_err)
    }
}

/// An Opus decoder producing 20 ms frames of interleaved samples.
pub struct OpusDecoder {
    inner: opus::Decoder,
    channels: u8,
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusDecoder")
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

impl OpusDecoder {
    /// `channels` is 1 or 2.
    pub fn new(channels_n: u8) -> Result<Self, Error> {
        let inner = opus::Decoder::new(SAMPLE_RATE, channels(channels_n)?).map_err(codec_err)?;
        Ok(Self {
            inner,
            channels: channels_n,
        })
    }

    /// Decodes one packet; `None` conceals a lost packet.
    pub fn decode(&mut self, packet: Option<&[u8]>) -> Result<Vec<i16>, Error> {
        let packet = packet.unwrap_or(&[]);
        // Room for the longest Opus packet (120 ms) so any valid packet decodes; a lost
        // packet is concealed for exactly one frame (libopus fills the whole buffer).
        let frames = if packet.is_empty() { 1 } else { 6 };
        let mut out = vec![0i16; FRAME_SAMPLES * frames * usize::from(self.channels)];
        let n = self
            .inner
            .decode(packet, &mut out, false)
            .map_err(codec_err)?;
        out.truncate(n * usize::from(self.channels));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f64, n: usize, phase0: usize) -> Vec<i16> {
        (0..n)
            .map(|i| {
                let t = (i + phase0) as f64 / f64::from(SAMPLE_RATE);
                (8000.0 * (2.0 * std::f64::consts::PI * freq * t).sin()) as i16
            })
            .collect()
    }

    /// Energy of `x` at `freq` relative to its total energy (single-bin DFT).
    fn tone_share(x: &[i16], freq: f64) -> f64 {
        let (mut re, mut im, mut total) = (0.0, 0.0, 0.0);
        for (i, s) in x.iter().enumerate() {
            let s = f64::from(*s);
            let w = 2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(SAMPLE_RATE);
            re += s * w.cos();
            im += s * w.sin();
            total += s * s;
        }
        2.0 * (re * re + im * im) / (x.len() as f64 * total.max(1.0))
    }

    #[test]
    fn mono_sine_round_trip() {
        let mut enc = OpusEncoder::new(1, 32_000).expect("enc");
        let mut dec = OpusDecoder::new(1).expect("dec");
        let mut out = Vec::new();
        for f in 0..50 {
            let pkt = enc
                .encode(&sine(440.0, FRAME_SAMPLES, f * FRAME_SAMPLES))
                .expect("encode");
            assert!(!pkt.is_empty() && pkt.len() < 400);
            let pcm = dec.decode(Some(&pkt)).expect("decode");
            assert_eq!(pcm.len(), FRAME_SAMPLES);
            out.extend(pcm);
        }
        // Skip the codec's start-up; the 440 Hz tone must dominate what comes out.
        let tail = &out[FRAME_SAMPLES * 10..];
        assert!(
            tone_share(tail, 440.0) > 0.8,
            "share {}",
            tone_share(tail, 440.0)
        );
        assert!(tone_share(tail, 1000.0) < 0.01);
        let lost = dec.decode(None).expect("concealment");
        assert_eq!(lost.len(), FRAME_SAMPLES);
    }

    #[test]
    fn stereo_frames_and_bad_input() {
        let mut enc = OpusEncoder::new(2, 64_000).expect("enc");
        let mut dec = OpusDecoder::new(2).expect("dec");
        let mono = sine(300.0, FRAME_SAMPLES, 0);
        let stereo: Vec<i16> = mono.iter().flat_map(|s| [*s, *s]).collect();
        let pkt = enc.encode(&stereo).expect("encode");
        assert_eq!(
            dec.decode(Some(&pkt)).expect("decode").len(),
            2 * FRAME_SAMPLES
        );
        assert!(
            enc.encode(&mono).is_err(),
            "mono frame into a stereo encoder"
        );
        assert!(OpusEncoder::new(3, 32_000).is_err());
        // A corrupt packet must come back as a value (error or concealment), never a panic.
        let _ = dec.decode(Some(&[0xff; 3]));
        assert_eq!(
            dec.decode(Some(&pkt)).expect("still decodes").len(),
            2 * FRAME_SAMPLES
        );
    }
}
