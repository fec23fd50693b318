//! H.264 encoding and decoding through OpenH264 (built from source by the `openh264`
//! crate), set up for real-time conferencing.
//!
//! Temporal layers: `openh264` 0.9 hard-codes `iTemporalLayerNum = 1` when it
//! (re)initialises the encoder; the parameter is reachable only through
//! `Encoder::raw_api()`. The one `unsafe` block that sets it lives in [`svc`], right
//! after each (re)initialisation, and each picture reports its temporal id.

use openh264::OpenH264API;
use openh264::decoder::{DecodedYUV, Decoder, DecoderConfig};
use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, QpRange,
    RateControlMode, UsageType,
};
use openh264::formats::YUVSource;

use crate::Error;
use crate::codec::libav::LibavH264Decoder;
use crate::codec::x264::X264Encoder;

fn codec_err(e: openh264::Error) -> Error {
    Error::Codec {
        codec: "h264",
        message: e.to_string(),
    }
}

/// A planar YUV 4:2:0 picture with tightly packed planes (stride = width).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct I420Frame {
    width: usize,
    height: usize,
    /// Luma, `width * height` bytes.
    pub y: Vec<u8>,
    /// Cb, `width/2 * height/2` bytes.
    pub u: Vec<u8>,
    /// Cr, `width/2 * height/2` bytes.
    pub v: Vec<u8>,
}

impl I420Frame {
    /// A picture filled with one colour. Odd sizes are rounded down to even because 4:2:0
    /// needs whole chroma samples; zero sizes are refused.
    pub fn filled(width: usize, height: usize, yuv: [u8; 3]) -> Result<Self, Error> {
        let (w, h) = (width & !1, height & !1);
        if w == 0 || h == 0 {
            return Err(Error::FrameSize("picture has no pixels"));
        }
        let c = (w / 2) * (h / 2);
        Ok(Self {
            width: w,
            height: h,
            y: vec![yuv[0]; w * h],
            u: vec![yuv[1]; c],
            v: vec![yuv[2]; c],
        })
    }

    /// Wraps planes; fails when their lengths do not match the (even) size.
    pub fn from_planes(
        width: usize,
        height: usize,
        y: Vec<u8>,
        u: Vec<u8>,
        v: Vec<u8>,
    ) -> Result<Self, Error> {
        if width == 0 || height == 0 || !width.is_multiple_of(2) || !height.is_multiple_of(2) {
            return Err(Error::FrameSize(
                "I420 needs a non-zero even width and height",
            ));
        }
        let c = (width / 2) * (height / 2);
        if y.len() != width * height || u.len() != c || v.len() != c {
            return Err(Error::FrameSize(
                "plane lengths do not match the picture size",
            ));
        }
        Ok(Self {
            width,
            height,
            y,
            u,
            v,
        })
    }

    /// Width in pixels (even).
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels (even).
    pub fn height(&self) -> usize {
        self.height
    }

    /// Luma PSNR against another picture of the same size, in dB (`f64::INFINITY` when equal).
    pub fn psnr_y(&self, other: &I420Frame) -> Result<f64, Error> {
        if self.width != other.width || self.height != other.height {
            return Err(Error::FrameSize("PSNR of pictures of different sizes"));
        }
        let sse: u64 = self
            .y
            .iter()
            .zip(&other.y)
            .map(|(a, b)| u64::from(a.abs_diff(*b)).pow(2))
            .sum();
        if sse == 0 {
            return Ok(f64::INFINITY);
        }
        let mse = sse as f64 / self.y.len() as f64;
        Ok(10.0 * (255.0 * 255.0 / mse).log10())
    }

    fn from_decoded(d: &DecodedYUV<'_>) -> Self {
        let (w, h) = d.dimensions();
        let (w, h) = (w & !1, h & !1);
        let (sy, su, sv) = d.strides();
        Self {
            width: w,
            height: h,
            y: pack_plane(d.y(), sy, w, h),
            u: pack_plane(d.u(), su, w / 2, h / 2),
            v: pack_plane(d.v(), sv, w / 2, h / 2),
        }
    }
}

/// The `pw` × `ph` picture of a plane stored `stride` bytes per row, rows packed.
/// `plane` holds at least `stride · (ph − 1) + pw` bytes.
pub(crate) fn pack_plane(plane: &[u8], stride: usize, pw: usize, ph: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(pw * ph);
    for row in 0..ph {
        out.extend_from_slice(&plane[row * stride..row * stride + pw]);
    }
    out
}

impl YUVSource for I420Frame {
    fn dimensions(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    fn strides(&self) -> (usize, usize, usize) {
        (self.width, self.width / 2, self.width / 2)
    }

    fn y(&self) -> &[u8] {
        &self.y
    }

    fn u(&self) -> &[u8] {
        &self.u
    }

    fn v(&self) -> &[u8] {
        &self.v
    }
}

/// Real-time encoder settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct H264EncoderConfig {
    /// Target bitrate in bit/s.
    pub bitrate_bps: u32,
    /// Frame rate the rate control plans for.
    pub fps: f32,
    /// Frames between periodic IDRs (0: only on request). Conferencing relies on PLI,
    /// so 0 is the default.
    pub intra_period: u32,
    /// Let rate control drop frames when over budget (keeps latency low on busy scenes).
    pub allow_frame_skip: bool,
    /// Encoder threads (1 keeps one meeting on one core; the MCU schedules meetings).
    pub threads: u16,
    /// Speed/quality trade-off of mode decision and motion search.
    pub complexity: H264Complexity,
    /// Pre-analysis that turns a scene cut into an IDR. Composed pictures change layout
    /// on purpose and the receiver asks for IDRs itself, so the MCU turns it off.
    pub scene_change_detect: bool,
    /// Per-macroblock QP from a texture pre-analysis (costs a pass over every picture).
    pub adaptive_quant: bool,
    /// Pre-analysis that codes unchanged background blocks cheaply (skip).
    pub background_detection: bool,
    /// How rate control spends bits.
    pub rate_control: H264RateControl,
    /// OpenH264's screen-content usage (tuned for synthetic pictures such as slides or a
    /// composed canvas with large static areas) instead of camera usage.
    pub screen_content: bool,
    /// Long-term reference frames (a receiver can recover from loss without an IDR).
    pub long_term_reference: bool,
    /// Lowest QP rate control may pick (0..=51).
    pub min_qp: u8,
    /// Highest QP rate control may pick (0..=51, >= `min_qp`). Capping it bounds how bad
    /// the first pictures get while rate control is still learning the content.
    pub max_qp: u8,
    /// Temporal layers, 1..=4 (dyadic: with 3, pictures go T0 T2 T1 T2 …). A receiver or
    /// an SFU may drop the upper layers and still decode the rest, and a lost T2 picture
    /// breaks nothing else: the loss protection leans on this.
    pub temporal_layers: u8,
    /// Which library encodes.
    pub backend: EncoderBackend,
}

/// Which library encodes H.264.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncoderBackend {
    /// OpenH264, built into the binary: temporal layers and long-term references.
    #[default]
    OpenH264,
    /// libx264 build 164, opened at run time ([`crate::codec::x264`]): more PSNR per bit
    /// for less CPU, one temporal layer only, GPL. Fails when the library is not installed.
    /// Codes Constrained Baseline, which every H.264 receiver decodes.
    X264,
    /// libx264 with CABAC (and, at the higher complexities, the 8×8 transform): Main or
    /// High profile, better pictures at the same bitrate, for receivers that all decode
    /// it (browsers do; a room system that negotiated Baseline does not).
    X264High,
}

impl EncoderBackend {
    /// Whether the library codes temporal layers (`H264EncoderConfig::temporal_layers`
    /// above 1); x264 has no temporal scalability.
    pub fn temporal_scalable(self) -> bool {
        self == EncoderBackend::OpenH264
    }
}

/// OpenH264 rate-control mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum H264RateControl {
    /// Holds the target bitrate; what real-time conferencing needs.
    #[default]
    Bitrate,
    /// Favours quality, lets the bitrate overshoot.
    Quality,
    /// Adjusts quality from buffer fullness only (no bitrate target).
    BufferBased,
    /// Bitrate control that plans with picture timestamps.
    Timestamp,
    /// No rate control: OpenH264 codes every picture at its base QP (26; the wrapper does
    /// not expose the layer QP), `bitrate_bps` is ignored.
    Off,
}

/// OpenH264 complexity mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum H264Complexity {
    /// Fastest: smallest motion search, fewest mode candidates.
    Low,
    /// OpenH264's default.
    #[default]
    Medium,
    /// Slowest, best compression.
    High,
}

impl Default for H264EncoderConfig {
    fn default() -> Self {
        Self {
            bitrate_bps: 2_000_000,
            fps: 30.0,
            intra_period: 0,
            allow_frame_skip: true,
            threads: 1,
            complexity: H264Complexity::Medium,
            scene_change_detect: true,
            adaptive_quant: true,
            background_detection: true,
            rate_control: H264RateControl::Bitrate,
            screen_content: false,
            long_term_reference: false,
            min_qp: 0,
            max_qp: 51,
            temporal_layers: 1,
            backend: EncoderBackend::OpenH264,
        }
    }
}

/// One encoded picture as an Annex-B access unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPicture {
    /// SPS/PPS (on keyframes) and slice NAL units with start codes.
    pub data: Vec<u8>,
    /// The picture is an IDR: a receiver can start decoding here.
    pub keyframe: bool,
    /// Temporal layer of the picture (0 = base; always 0 with one temporal layer).
    pub temporal_id: u8,
}

/// A real-time H.264 encoder with a bitrate target (OpenH264 or libx264).
pub struct H264Encoder {
    inner: EncoderInner,
    cfg: H264EncoderConfig,
}

enum EncoderInner {
    OpenH264 {
        enc: Box<Encoder>,
        /// Picture size the temporal layers were last applied at: the library
        /// re-initialises (back to one layer) when the size changes.
        svc_applied_for: Option<(usize, usize)>,
    },
    X264(X264Encoder),
}

impl std::fmt::Debug for H264Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H264Encoder")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl H264Encoder {
    /// An encoder; the picture size comes from the first frame and may change later (the
    /// encoder re-initialises and emits an IDR).
    pub fn new(cfg: H264EncoderConfig) -> Result<Self, Error> {
        if cfg.bitrate_bps == 0 || !(cfg.fps > 0.0 && cfg.fps <= 120.0) {
            return Err(Error::Config(
                "H.264 encoder needs a bitrate and 0 < fps <= 120",
            ));
        }
        // Checked here because the library panics on a bad range.
        if cfg.max_qp > 51 || cfg.min_qp > cfg.max_qp {
            return Err(Error::Config(
                "H.264 QP range must satisfy min <= max <= 51",
            ));
        }
        if !(1..=4).contains(&cfg.temporal_layers) {
            return Err(Error::Config("H.264 temporal layers must be 1..=4"));
        }
        if matches!(cfg.backend, EncoderBackend::X264 | EncoderBackend::X264High) {
            return Ok(Self {
                inner: EncoderInner::X264(X264Encoder::new(cfg)?),
                cfg,
            });
        }
        let config = EncoderConfig::new()
            .bitrate(BitRate::from_bps(cfg.bitrate_bps))
            .max_frame_rate(FrameRate::from_hz(cfg.fps))
            .usage_type(if cfg.screen_content {
                UsageType::ScreenContentRealTime
            } else {
                UsageType::CameraVideoRealTime
            })
            .rate_control_mode(match cfg.rate_control {
                H264RateControl::Bitrate => RateControlMode::Bitrate,
                H264RateControl::Quality => RateControlMode::Quality,
                H264RateControl::BufferBased => RateControlMode::Bufferbased,
                H264RateControl::Timestamp => RateControlMode::Timestamp,
                H264RateControl::Off => RateControlMode::Off,
            })
            .long_term_reference(cfg.long_term_reference)
            .qp(QpRange::new(cfg.min_qp, cfg.max_qp))
            .skip_frames(cfg.allow_frame_skip)
            .complexity(match cfg.complexity {
                H264Complexity::Low => Complexity::Low,
                H264Complexity::Medium => Complexity::Medium,
                H264Complexity::High => Complexity::High,
            })
            .scene_change_detect(cfg.scene_change_detect)
            .adaptive_quantization(cfg.adaptive_quant)
            .background_detection(cfg.background_detection)
            .intra_frame_period(IntraFramePeriod::from_num_frames(cfg.intra_period))
            .num_threads(cfg.threads);
        let enc =
            Encoder::with_api_config(OpenH264API::from_source(), config).map_err(codec_err)?;
        Ok(Self {
            inner: EncoderInner::OpenH264 {
                enc: Box::new(enc),
                svc_applied_for: None,
            },
            cfg,
        })
    }

    /// The settings this encoder was built with.
    pub fn config(&self) -> H264EncoderConfig {
        self.cfg
    }

    /// Makes the next encoded picture an IDR (a receiver sent PLI/FIR or joined).
    pub fn force_keyframe(&mut self) {
        match &mut self.inner {
            EncoderInner::OpenH264 { enc, .. } => enc.force_intra_frame(),
            EncoderInner::X264(enc) => enc.force_keyframe(),
        }
    }

    /// Encodes one picture. `Ok(None)` when rate control skipped it.
    pub fn encode(&mut self, frame: &I420Frame) -> Result<Option<EncodedPicture>, Error> {
        let (enc, svc_applied_for) = match &mut self.inner {
            EncoderInner::OpenH264 {
                enc,
                svc_applied_for,
            } => (enc, svc_applied_for),
            EncoderInner::X264(enc) => return enc.encode(frame),
        };
        let size = (frame.width(), frame.height());
        let first_at_size = *svc_applied_for != Some(size);
        let bs = enc.encode(frame).map_err(codec_err)?;
        let keyframe = match bs.frame_type() {
            FrameType::IDR | FrameType::I => true,
            FrameType::P | FrameType::IPMixed => false,
            FrameType::Skip => return Ok(None),
            FrameType::Invalid => {
                return Err(Error::Codec {
                    codec: "h264",
                    message: "encoder returned an invalid frame".into(),
                });
            }
        };
        let temporal_id = bs.layer(0).map_or(0, |l| l.raw_info().uiTemporalId);
        let data = bs.to_vec();
        if first_at_size && self.cfg.temporal_layers > 1 {
            // The picture just coded (re)initialised the library with one layer; from the
            // next one on (which the reset makes an IDR) the layers are in effect.
            svc::set_temporal_layers(enc, self.cfg.temporal_layers)?;
        }
        *svc_applied_for = Some(size);
        if data.is_empty() {
            return Ok(None);
        }
        Ok(Some(EncodedPicture {
            data,
            keyframe,
            temporal_id,
        }))
    }
}

mod svc {
    //! OpenH264's option calls, which take a raw pointer to the parameter struct (the
    //! media crate's other `unsafe` is `codec::libav`).
    #![allow(unsafe_code)]

    use openh264::encoder::Encoder;
    use openh264_sys2::{ENCODER_OPTION_SVC_ENCODE_PARAM_EXT, SEncParamExt, cmResultSuccess};

    use crate::Error;

    /// Re-applies the running encoder's parameters with `layers` temporal layers.
    pub(super) fn set_temporal_layers(enc: &mut Encoder, layers: u8) -> Result<(), Error> {
        let mut params = SEncParamExt::default();
        svc_params(enc, &mut params, false)?;
        // Only the temporal layer count changes; every other field is the library's own.
        params.iTemporalLayerNum = i32::from(layers);
        svc_params(enc, &mut params, true)
    }

    /// Reads (`write` false) or writes the encoder's `SEncParamExt`.
    fn svc_params(enc: &mut Encoder, params: &mut SEncParamExt, write: bool) -> Result<(), Error> {
        let ptr = std::ptr::from_mut(params).cast();
        // SAFETY: `enc` is initialised (callers run after it has encoded a picture, which
        // initialises it), `raw_api` points at the live encoder, and the call reads or
        // writes exactly one `SEncParamExt` through `ptr`, which points at a properly
        // aligned struct borrowed for the whole call.
        let rc = unsafe {
            let api = enc.raw_api();
            if write {
                api.set_option(ENCODER_OPTION_SVC_ENCODE_PARAM_EXT, ptr)
            } else {
                api.get_option(ENCODER_OPTION_SVC_ENCODE_PARAM_EXT, ptr)
            }
        };
        if rc != cmResultSuccess {
            let what = if write { "writing" } else { "reading" };
            return Err(Error::Codec {
                codec: "h264",
                message: format!("{what} of the SVC parameters failed ({rc})"),
            });
        }
        Ok(())
    }
}

/// Which library decodes H.264.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecoderBackend {
    /// OpenH264, built into the binary.
    #[default]
    OpenH264,
    /// FFmpeg's libavcodec, opened at run time ([`crate::codec::libav`]): about a third
    /// less CPU per picture. Fails when the library is not installed.
    Libav,
    /// libavcodec when this host has it, else OpenH264.
    Auto,
}

/// An H.264 decoder returning packed I420 pictures.
pub struct H264Decoder {
    inner: DecoderInner,
}

enum DecoderInner {
    OpenH264(Decoder),
    Libav(LibavH264Decoder),
}

impl std::fmt::Debug for H264Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H264Decoder")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

impl H264Decoder {
    /// An OpenH264 decoder with its error concealment on.
    pub fn new() -> Result<Self, Error> {
        Self::with_backend(DecoderBackend::OpenH264)
    }

    /// A decoder of the given backend (`Auto`: libavcodec if it loads).
    pub fn with_backend(backend: DecoderBackend) -> Result<Self, Error> {
        let inner = match backend {
            DecoderBackend::OpenH264 => DecoderInner::OpenH264(
                Decoder::with_api_config(OpenH264API::from_source(), DecoderConfig::new())
                    .map_err(codec_err)?,
            ),
            DecoderBackend::Libav => DecoderInner::Libav(LibavH264Decoder::new()?),
            DecoderBackend::Auto => match LibavH264Decoder::new() {
                Ok(d) => DecoderInner::Libav(d),
                Err(_) => return Self::with_backend(DecoderBackend::OpenH264),
            },
        };
        Ok(Self { inner })
    }

    /// The library this decoder runs on (never `Auto`).
    pub fn backend(&self) -> DecoderBackend {
        match self.inner {
            DecoderInner::OpenH264(_) => DecoderBackend::OpenH264,
            DecoderInner::Libav(_) => DecoderBackend::Libav,
        }
    }

    /// Decodes one Annex-B access unit. `Ok(None)` when the decoder needs more data
    /// (parameter sets only, or a picture still being assembled).
    pub fn decode(&mut self, access_unit: &[u8]) -> Result<Option<I420Frame>, Error> {
        let dec = match &mut self.inner {
            DecoderInner::OpenH264(d) => d,
            DecoderInner::Libav(d) => return d.decode(access_unit),
        };
        match dec.decode(access_unit) {
            Ok(Some(pic)) => {
                let (w, h) = pic.dimensions();
                if w < 2 || h < 2 {
                    return Err(Error::Codec {
                        codec: "h264",
                        message: "decoded picture has no pixels".into(),
                    });
                }
                Ok(Some(I420Frame::from_decoded(&pic)))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(codec_err(e)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A textured background with a bright square moving by `t` pixels: real content for
    /// motion search, so PSNR reflects actual coding.
    pub(crate) fn moving_pattern(w: usize, h: usize, t: usize) -> I420Frame {
        let mut f = I420Frame::filled(w, h, [16, 128, 128]).expect("size");
        for y in 0..h {
            for x in 0..w {
                let v = ((x / 8 + y / 8) % 2) as u8 * 60 + (x * 100 / w) as u8 + 40;
                f.y[y * w + x] = v;
            }
        }
        let (sx, sy) = ((t * 3) % (w - 64), (t * 2) % (h - 64));
        for y in sy..sy + 64 {
            for x in sx..sx + 64 {
                f.y[y * w + x] = 220;
            }
        }
        for y in 0..h / 2 {
            for x in 0..w / 2 {
                f.u[y * (w / 2) + x] = (90 + x * 80 / (w / 2)) as u8;
                f.v[y * (w / 2) + x] = (160 - y * 60 / (h / 2)) as u8;
            }
        }
        f
    }

    #[test]
    fn round_trip_keeps_quality_and_keyframes_on_request() {
        let (w, h) = (640, 360);
        let cfg = H264EncoderConfig {
            bitrate_bps: 1_500_000,
            allow_frame_skip: false,
            ..Default::default()
        };
        let mut enc = H264Encoder::new(cfg).expect("encoder");
        let mut dec = H264Decoder::new().expect("decoder");
        let mut psnrs = Vec::new();
        let mut keyframes = Vec::new();
        for t in 0..40 {
            if t == 25 {
                enc.force_keyframe();
            }
            let src = moving_pattern(w, h, t);
            let pic = enc
                .encode(&src)
                .expect("encode")
                .expect("no skip configured");
            keyframes.push(pic.keyframe);
            let out = dec
                .decode(&pic.data)
                .expect("decode")
                .expect("one picture per access unit");
            assert_eq!((out.width(), out.height()), (w, h));
            psnrs.push(src.psnr_y(&out).expect("same size"));
        }
        assert!(keyframes[0], "stream starts with an IDR");
        assert!(keyframes[25], "forced keyframe honoured");
        assert!(
            keyframes[1..25].iter().all(|k| !k),
            "no periodic IDRs configured"
        );
        let avg = psnrs.iter().sum::<f64>() / psnrs.len() as f64;
        let min = psnrs.iter().copied().fold(f64::INFINITY, f64::min);
        assert!(
            avg >= 35.0 && min >= 32.0,
            "avg {avg:.1} dB, min {min:.1} dB"
        );
    }

    #[test]
    fn temporal_layers_let_a_receiver_drop_upper_layers() {
        let (w, h) = (640, 360);
        let cfg = H264EncoderConfig {
            bitrate_bps: 1_500_000,
            allow_frame_skip: false,
            temporal_layers: 3,
            ..Default::default()
        };
        let mut enc = H264Encoder::new(cfg).expect("encoder");
        // Decoders that take every layer, only T0+T1, and only T0.
        let mut decs: Vec<H264Decoder> = (0..3)
            .map(|_| H264Decoder::new().expect("decoder"))
            .collect();
        let mut tids = Vec::new();
        let mut shown = [0usize; 3];
        for t in 0..40 {
            let src = moving_pattern(w, h, t);
            let pic = enc
                .encode(&src)
                .expect("encode")
                .expect("no skip configured");
            tids.push(pic.temporal_id);
            for (max_tid, dec) in decs.iter_mut().enumerate() {
                if usize::from(pic.temporal_id) > max_tid {
                    continue;
                }
                // A dropped layer must leave the rest decodable: no error, right picture.
                let out = dec.decode(&pic.data).expect("decode").expect("a picture");
                let psnr = src.psnr_y(&out).expect("same size");
                assert!(
                    psnr >= 32.0,
                    "frame {t} (T{}) at ≤T{max_tid}: {psnr:.1} dB",
                    pic.temporal_id
                );
                shown[max_tid] += 1;
            }
        }
        // After the first picture (coded before the layers take effect) the pattern is
        // dyadic: T0 T2 T1 T2.
        let tail = &tids[8..16];
        assert_eq!(tail.iter().filter(|&&t| t == 0).count(), 2, "{tids:?}");
        assert_eq!(tail.iter().filter(|&&t| t == 1).count(), 2, "{tids:?}");
        assert_eq!(tail.iter().filter(|&&t| t == 2).count(), 4, "{tids:?}");
        assert!(shown[0] < shown[1] && shown[1] < shown[2], "{shown:?}");
        // One layer stays one layer.
        let mut one = H264Encoder::new(H264EncoderConfig::default()).expect("encoder");
        for t in 0..6 {
            let pic = one
                .encode(&moving_pattern(w, h, t))
                .expect("encode")
                .expect("picture");
            assert_eq!(pic.temporal_id, 0);
        }
        assert!(
            H264Encoder::new(H264EncoderConfig {
                temporal_layers: 5,
                ..Default::default()
            })
            .is_err()
        );
    }

    #[test]
    fn garbage_and_truncated_streams_are_errors_not_panics() {
        let mut enc = H264Encoder::new(H264EncoderConfig::default()).expect("encoder");
        let pic = enc
            .encode(&moving_pattern(320, 240, 0))
            .expect("encode")
            .expect("idr");
        let mut dec = H264Decoder::new().expect("decoder");
        // Truncated IDR: must not panic; whatever it returns, a later full IDR decodes.
        let _ = dec.decode(&pic.data[..pic.data.len() / 3]);
        let _ = dec.decode(&[0, 0, 0, 1, 0x65, 0xff, 0x00, 0x12, 0x34]);
        let _ = dec.decode(&[0xde, 0xad, 0xbe, 0xef]);
        enc.force_keyframe();
        let pic = enc
            .encode(&moving_pattern(320, 240, 1))
            .expect("encode")
            .expect("idr");
        let out = dec.decode(&pic.data).expect("decode").expect("picture");
        assert_eq!(out.width(), 320);
    }

    /// Mean PSNR and total bytes of 20 pictures of the moving pattern.
    fn run(cfg: H264EncoderConfig) -> (f64, usize) {
        let mut enc = H264Encoder::new(cfg).expect("encoder");
        let mut dec = H264Decoder::new().expect("decoder");
        let (mut psnr, mut bytes) = (0.0, 0);
        for t in 0..20 {
            let src = moving_pattern(320, 240, t);
            let pic = enc.encode(&src).expect("encode").expect("no skip");
            bytes += pic.data.len();
            let out = dec.decode(&pic.data).expect("decode").expect("picture");
            psnr += src.psnr_y(&out).expect("size").min(99.0);
        }
        (psnr / 20.0, bytes)
    }

    #[test]
    fn rate_control_qp_range_and_usage_settings_take_effect() {
        let base = H264EncoderConfig {
            bitrate_bps: 300_000,
            allow_frame_skip: false,
            ..Default::default()
        };
        // A QP pinned high must cost quality and bits against a QP pinned low.
        let (coarse_psnr, coarse_bytes) = run(H264EncoderConfig {
            min_qp: 40,
            max_qp: 40,
            ..base
        });
        let (fine_psnr, fine_bytes) = run(H264EncoderConfig {
            min_qp: 12,
            max_qp: 12,
            ..base
        });
        assert!(
            fine_psnr > coarse_psnr + 6.0 && fine_bytes > coarse_bytes * 2,
            "qp 12: {fine_psnr:.1} dB {fine_bytes} B, qp 40: {coarse_psnr:.1} dB {coarse_bytes} B"
        );
        // The other modes produce decodable streams of sane quality.
        for cfg in [
            H264EncoderConfig {
                rate_control: H264RateControl::Quality,
                ..base
            },
            H264EncoderConfig {
                rate_control: H264RateControl::Off,
                ..base
            },
            H264EncoderConfig {
                screen_content: true,
                ..base
            },
            H264EncoderConfig {
                long_term_reference: true,
                ..base
            },
        ] {
            let (psnr, _) = run(cfg);
            assert!(psnr > 28.0, "{cfg:?}: {psnr:.1} dB");
        }
        assert!(
            H264Encoder::new(H264EncoderConfig {
                min_qp: 30,
                max_qp: 20,
                ..base
            })
            .is_err()
        );
        assert!(H264Encoder::new(H264EncoderConfig { max_qp: 52, ..base }).is_err());
    }

    #[test]
    fn bad_sizes_and_settings_are_refused() {
        assert!(I420Frame::filled(0, 10, [0; 3]).is_err());
        assert!(I420Frame::from_planes(4, 4, vec![0; 16], vec![0; 4], vec![0; 3]).is_err());
        assert!(
            H264Encoder::new(H264EncoderConfig {
                bitrate_bps: 0,
                ..Default::default()
            })
            .is_err()
        );
    }
}
