//! H.264 encoding with libx264, loaded at run time.
//!
//! The encoder is two thirds of the MCU's CPU, and OpenH264 spends more per bit than x264:
//! on the 9-picture talking mix, x264's `ultrafast` preset (with 4×4 intra blocks in P
//! pictures) codes 1.4 dB more PSNR than OpenH264's low-complexity mode at the same
//! 2 Mbit/s, for a quarter less encode CPU (`docs/mcu.md`). `EncoderBackend::X264` codes
//! Constrained Baseline at every complexity, the profile OpenH264 codes and every H.264
//! receiver (browsers, room systems) decodes; `X264High` keeps CABAC (Main or High
//! profile) for deployments whose receivers all decode it.
//!
//! Like [`crate::codec::libav`] it is not linked: the library is opened with `dlopen`, so
//! the build needs neither headers nor bindgen. libx264 is GPL; an operator opts in
//! (`[mcu] encoder = "x264"`).
//!
//! x264's parameter and picture structs change with its API build, so only build 164 is
//! accepted: the entry point is looked up by its build-suffixed name
//! (`x264_encoder_open_164`), which exists in no other build, and the few fields written
//! directly are checked against the library's own defaults after it fills the struct.
//! Everything else is set through `x264_param_parse`, by name.
// FFI by hand: every `unsafe` block below states the invariant it relies on.
#![allow(unsafe_code)]

use std::ffi::{CString, c_char, c_int, c_void};
use std::ptr;
use std::sync::OnceLock;

use libloading::Library;

use crate::Error;
use crate::codec::openh264::{
    EncodedPicture, EncoderBackend, H264Complexity, H264EncoderConfig, H264RateControl, I420Frame,
};

/// The libx264 API build whose struct layouts this module mirrors (Debian 12 and 13 ship it).
const SONAME: &str = "libx264.so.164";
/// `sizeof(x264_param_t)` in build 164.
const PARAM_SIZE: usize = 1024;
/// Offsets in `x264_param_t` of the fields `x264_param_parse` cannot set.
const PARAM_WIDTH: usize = 28;
const PARAM_HEIGHT: usize = 32;
const PARAM_CSP: usize = 36;
const PARAM_BITDEPTH: usize = 40;
/// `X264_CSP_I420`, `X264_TYPE_AUTO`, `X264_TYPE_IDR`.
const CSP_I420: c_int = 2;
const TYPE_AUTO: c_int = 0;
const TYPE_IDR: c_int = 1;

/// `x264_param_t`, opaque except for the offsets above.
#[repr(C, align(8))]
struct Param([u8; PARAM_SIZE]);

impl Param {
    fn get(&self, offset: usize) -> c_int {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[offset..offset + 4]);
        c_int::from_ne_bytes(b)
    }

    fn set(&mut self, offset: usize, v: c_int) {
        self.0[offset..offset + 4].copy_from_slice(&v.to_ne_bytes());
    }
}

/// `x264_image_t`.
#[repr(C)]
struct Image {
    csp: c_int,
    planes: c_int,
    stride: [c_int; 4],
    plane: [*mut u8; 4],
}

/// `x264_picture_t`: the leading fields used here, the rest (properties, HRD timing,
/// SEI, opaque) kept as bytes that `x264_picture_init` zeroes.
#[repr(C)]
struct Picture {
    kind: c_int,
    qp_plus1: c_int,
    pic_struct: c_int,
    keyframe: c_int,
    pts: i64,
    dts: i64,
    param: *mut c_void,
    img: Image,
    rest: [u8; 144],
}

/// `x264_nal_t`.
#[repr(C)]
struct Nal {
    ref_idc: c_int,
    kind: c_int,
    long_startcode: c_int,
    first_mb: c_int,
    last_mb: c_int,
    payload_len: c_int,
    payload: *mut u8,
    padding: c_int,
}

const _: () = assert!(size_of::<Picture>() == 240 && size_of::<Nal>() == 40);
const _: () = assert!(size_of::<Image>() == 56 && size_of::<Param>() == PARAM_SIZE);

type DefaultPreset = unsafe extern "C" fn(*mut Param, *const c_char, *const c_char) -> c_int;
type ParamParse = unsafe extern "C" fn(*mut Param, *const c_char, *const c_char) -> c_int;
type ApplyProfile = unsafe extern "C" fn(*mut Param, *const c_char) -> c_int;
type EncoderOpen = unsafe extern "C" fn(*mut Param) -> *mut c_void;
type EncoderEncode = unsafe extern "C" fn(
    *mut c_void,
    *mut *mut Nal,
    *mut c_int,
    *mut Picture,
    *mut Picture,
) -> c_int;
type EncoderClose = unsafe extern "C" fn(*mut c_void);
type PictureInit = unsafe extern "C" fn(*mut Picture);

/// The entry points, resolved once per process.
struct Api {
    default_preset: DefaultPreset,
    param_parse: ParamParse,
    apply_profile: ApplyProfile,
    encoder_open: EncoderOpen,
    encoder_encode: EncoderEncode,
    encoder_close: EncoderClose,
    picture_init: PictureInit,
    /// Keeps the function pointers above valid for the life of the process.
    _lib: Library,
}

fn load() -> Result<Api, String> {
    // SAFETY: loading a system library runs its initialisers; libx264 has none with
    // preconditions.
    let lib = unsafe { Library::new(SONAME) }.map_err(|e| e.to_string())?;
    macro_rules! sym {
        ($name:literal) => {
            // SAFETY: the type is the function's C prototype in build 164, which the
            // build-suffixed open symbol below proves this library is; the library outlives
            // the pointer (it is kept in `Api`).
            *unsafe { lib.get(concat!($name, "\0").as_bytes()) }.map_err(|e| e.to_string())?
        };
    }
    Ok(Api {
        encoder_open: sym!("x264_encoder_open_164"),
        default_preset: sym!("x264_param_default_preset"),
        param_parse: sym!("x264_param_parse"),
        apply_profile: sym!("x264_param_apply_profile"),
        encoder_encode: sym!("x264_encoder_encode"),
        encoder_close: sym!("x264_encoder_close"),
        picture_init: sym!("x264_picture_init"),
        _lib: lib,
    })
}

fn api() -> Result<&'static Api, Error> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(load).as_ref().map_err(|e| Error::Codec {
        codec: "h264",
        message: format!("libx264 (build 164) unavailable: {e}"),
    })
}

/// Whether libx264 build 164 could be loaded on this host.
pub fn available() -> bool {
    api().is_ok()
}

/// A picture as `x264_picture_init` leaves it: zeroed, with x264's defaults.
fn blank_picture(api: &Api) -> Picture {
    let mut pic = std::mem::MaybeUninit::<Picture>::uninit();
    // SAFETY: x264_picture_init writes every byte of the struct.
    unsafe {
        (api.picture_init)(pic.as_mut_ptr());
        pic.assume_init()
    }
}

fn x264_err(message: String) -> Error {
    Error::Codec {
        codec: "h264",
        message,
    }
}

/// The preset and the settings on top of it for each complexity. `Low` is `ultrafast`
/// with 4×4 intra blocks allowed in P pictures (`partitions` sets the inter analysis
/// only; IDRs keep `ultrafast`'s 16×16 intra): on the composed talking canvas +0.1 dB
/// for no measurable CPU (`docs/mcu.md`). With `high` (the `X264High` backend) `Low` also
/// gets CABAC back (+0.3 dB on talking, +1.8–3.8 dB on full motion, for up to 15 % more
/// CPU), which needs Main profile.
fn preset(
    c: H264Complexity,
    high: bool,
) -> (&'static str, &'static [(&'static str, &'static str)]) {
    match (c, high) {
        (H264Complexity::Low, false) => ("ultrafast", &[("partitions", "i4x4")]),
        (H264Complexity::Low, true) => ("ultrafast", &[("partitions", "i4x4"), ("cabac", "1")]),
        (H264Complexity::Medium, _) => ("superfast", &[]),
        (H264Complexity::High, _) => ("veryfast", &[]),
    }
}

/// The `x264_param_parse` settings an [`H264EncoderConfig`] asks for.
fn settings(cfg: &H264EncoderConfig) -> Vec<(&'static str, String)> {
    let kbps = (cfg.bitrate_bps / 1000).max(1).to_string();
    let mut s: Vec<(&'static str, String)> = vec![
        ("log", "-1".into()),
        ("threads", cfg.threads.max(1).to_string()),
        ("fps", cfg.fps.to_string()),
        // Pictures come at the output rate; rate control plans by frame count.
        ("force-cfr", "1".into()),
        ("annexb", "1".into()),
        // Every IDR carries SPS/PPS: a receiver joining at a keyframe needs nothing else.
        ("repeat-headers", "1".into()),
        (
            "keyint",
            if cfg.intra_period == 0 {
                "infinite".into()
            } else {
                cfg.intra_period.to_string()
            },
        ),
        ("aq-mode", if cfg.adaptive_quant { "1" } else { "0" }.into()),
        ("qpmin", cfg.min_qp.to_string()),
        ("qpmax", cfg.max_qp.to_string()),
    ];
    // 40 is x264's own default threshold; `ultrafast` alone would leave it off.
    s.push((
        "scenecut",
        if cfg.scene_change_detect { "40" } else { "0" }.into(),
    ));
    match cfg.rate_control {
        H264RateControl::Off => s.push(("qp", "26".into())),
        H264RateControl::Quality => s.push(("bitrate", kbps)),
        H264RateControl::Bitrate | H264RateControl::BufferBased | H264RateControl::Timestamp => {
            // A one-second buffer: an IDR of a still 1080p picture fits, a burst of motion
            // cannot run the bitrate up for longer than that.
            s.push(("vbv-maxrate", kbps.clone()));
            s.push(("vbv-bufsize", kbps.clone()));
            s.push(("bitrate", kbps));
        }
    }
    s
}

/// One libx264 encoder; opened at the first picture's size and reopened (with an IDR) when
/// the size changes.
pub struct X264Encoder {
    api: &'static Api,
    cfg: H264EncoderConfig,
    enc: *mut c_void,
    size: (usize, usize),
    pts: i64,
    force_idr: bool,
}

// SAFETY: the encoder handle is owned by this value alone and x264 keeps no thread
// affinity; its worker threads (with `threads` > 1) belong to the handle, not the caller.
unsafe impl Send for X264Encoder {}

impl std::fmt::Debug for X264Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X264Encoder")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl X264Encoder {
    /// An encoder for `cfg`. x264 has no temporal scalability and no long-term references
    /// through this interface, so asking for either is a configuration error. Frame
    /// skipping, background detection and screen-content mode are OpenH264's and have no
    /// effect here (x264 keeps every picture and decides skip blocks itself).
    pub fn new(cfg: H264EncoderConfig) -> Result<Self, Error> {
        if cfg.temporal_layers > 1 || cfg.long_term_reference {
            return Err(Error::Config(
                "the x264 encoder codes one temporal layer without long-term references",
            ));
        }
        let api = api()?;
        Ok(Self {
            api,
            cfg,
            enc: ptr::null_mut(),
            size: (0, 0),
            pts: 0,
            force_idr: false,
        })
    }

    /// Makes the next picture an IDR.
    pub fn force_keyframe(&mut self) {
        self.force_idr = true;
    }

    fn open(&mut self, width: usize, height: usize) -> Result<(), Error> {
        self.close();
        let high = self.cfg.backend == EncoderBackend::X264High;
        let (name, extra) = preset(self.cfg.complexity, high);
        let mut p = Param([0; PARAM_SIZE]);
        let cname = CString::new(name).map_err(|e| x264_err(e.to_string()))?;
        // SAFETY: `p` is a writable, aligned buffer of sizeof(x264_param_t) for build 164;
        // the strings are NUL-terminated and live for the call.
        let rc =
            unsafe { (self.api.default_preset)(&mut p, cname.as_ptr(), c"zerolatency".as_ptr()) };
        if rc != 0 {
            return Err(x264_err(format!("unknown preset {name}")));
        }
        // The fields written by offset must read as x264's documented defaults; anything
        // else means the layout is not the one this module was written against.
        if p.get(PARAM_CSP) != CSP_I420 || p.get(PARAM_BITDEPTH) != 8 {
            return Err(x264_err(
                "libx264 parameter layout is not build 164's".into(),
            ));
        }
        let all = extra
            .iter()
            .map(|(k, v)| (*k, (*v).to_string()))
            .chain(settings(&self.cfg));
        for (k, v) in all {
            let (ck, cv) = (
                CString::new(k).map_err(|e| x264_err(e.to_string()))?,
                CString::new(v.clone()).map_err(|e| x264_err(e.to_string()))?,
            );
            // SAFETY: as above; x264 copies what it keeps.
            if unsafe { (self.api.param_parse)(&mut p, ck.as_ptr(), cv.as_ptr()) } != 0 {
                return Err(x264_err(format!("x264 rejected {k}={v}")));
            }
        }
        let w = c_int::try_from(width).map_err(|_| Error::FrameSize("picture too wide"))?;
        let h = c_int::try_from(height).map_err(|_| Error::FrameSize("picture too tall"))?;
        p.set(PARAM_WIDTH, w);
        p.set(PARAM_HEIGHT, h);
        // Baseline turns off what the presets above Low enable (CABAC, 8×8 transform):
        // the output decodes wherever OpenH264's does. "high" lets x264 keep them and
        // signal the lowest profile that covers them (Main for Low + CABAC).
        let profile = if high { c"high" } else { c"baseline" };
        // SAFETY: as above.
        if unsafe { (self.api.apply_profile)(&mut p, profile.as_ptr()) } != 0 {
            return Err(x264_err(format!(
                "x264 cannot code these settings in {profile:?} profile"
            )));
        }
        // SAFETY: `p` is a fully initialised parameter set; x264 copies it.
        let enc = unsafe { (self.api.encoder_open)(&mut p) };
        if enc.is_null() {
            return Err(x264_err(format!("x264 would not open at {width}x{height}")));
        }
        self.enc = enc;
        self.size = (width, height);
        Ok(())
    }

    fn close(&mut self) {
        if !self.enc.is_null() {
            // SAFETY: `enc` came from encoder_open and is closed once (nulled below).
            unsafe { (self.api.encoder_close)(self.enc) };
            self.enc = ptr::null_mut();
        }
    }

    /// Encodes one picture. `Ok(None)` when x264 produced no output for it.
    pub fn encode(&mut self, frame: &I420Frame) -> Result<Option<EncodedPicture>, Error> {
        let (w, h) = (frame.width(), frame.height());
        if self.enc.is_null() || self.size != (w, h) {
            self.open(w, h)?;
            self.force_idr = false;
        }
        // I420Frame guarantees even sizes and packed planes of exactly these lengths.
        let stride =
            |n: usize| c_int::try_from(n).map_err(|_| Error::FrameSize("picture too wide"));
        let mut pic = blank_picture(self.api);
        pic.img = Image {
            csp: CSP_I420,
            planes: 3,
            stride: [stride(w)?, stride(w / 2)?, stride(w / 2)?, 0],
            // x264 only reads the input planes (it copies them into its own frame).
            plane: [
                frame.y.as_ptr().cast_mut(),
                frame.u.as_ptr().cast_mut(),
                frame.v.as_ptr().cast_mut(),
                ptr::null_mut(),
            ],
        };
        pic.pts = self.pts;
        self.pts += 1;
        pic.kind = if std::mem::take(&mut self.force_idr) {
            TYPE_IDR
        } else {
            TYPE_AUTO
        };
        // x264 fills only some fields of the output picture; the rest stay as initialised.
        let mut out = blank_picture(self.api);
        let mut nals: *mut Nal = ptr::null_mut();
        let mut count: c_int = 0;
        // SAFETY: `enc` is open; `pic` describes planes valid for the call and the sizes
        // the encoder was opened at; x264 writes `nals`, `count` and `out`.
        let size = unsafe {
            (self.api.encoder_encode)(self.enc, &mut nals, &mut count, &mut pic, &mut out)
        };
        if size < 0 {
            return Err(x264_err(format!("x264_encoder_encode failed ({size})")));
        }
        if size == 0 || nals.is_null() {
            return Ok(None);
        }
        let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        for i in 0..usize::try_from(count).unwrap_or(0) {
            // SAFETY: x264 returns `count` NAL descriptors whose payloads stay valid until
            // the next call on this encoder.
            let nal = unsafe { &*nals.add(i) };
            let len = usize::try_from(nal.payload_len).unwrap_or(0);
            if len > 0 && !nal.payload.is_null() {
                // SAFETY: as above; `payload` points at `len` readable bytes.
                data.extend_from_slice(unsafe { std::slice::from_raw_parts(nal.payload, len) });
            }
        }
        Ok(Some(EncodedPicture {
            data,
            keyframe: out.keyframe != 0,
            temporal_id: 0,
        }))
    }
}

impl Drop for X264Encoder {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::openh264::{DecoderBackend, H264Decoder};

    /// Skips when libx264 is missing, unless the environment says it must be there.
    fn have_x264() -> bool {
        if available() {
            return true;
        }
        assert!(
            std::env::var_os("HUITONG_REQUIRE_X264").is_none(),
            "HUITONG_REQUIRE_X264 is set but libx264 build 164 does not load"
        );
        eprintln!("libx264 not installed: skipped");
        false
    }

    /// A moving gradient with a bright square, different in every picture.
    fn picture(w: usize, h: usize, n: usize) -> I420Frame {
        let mut y = vec![0u8; w * h];
        for r in 0..h {
            for c in 0..w {
                let inside = (c + 4 * n) % w < w / 4 && r > h / 3 && r < h / 2;
                y[r * w + c] = if inside {
                    235
                } else {
                    ((r + c + n) % 200) as u8 + 16
                };
            }
        }
        let cs = (w / 2) * (h / 2);
        I420Frame::from_planes(w, h, y, vec![100; cs], vec![150; cs]).unwrap()
    }

    fn cfg() -> H264EncoderConfig {
        H264EncoderConfig {
            bitrate_bps: 800_000,
            complexity: H264Complexity::Low,
            ..H264EncoderConfig::default()
        }
    }

    #[test]
    fn pictures_decode_faithfully_with_openh264() {
        if !have_x264() {
            return;
        }
        let mut enc = X264Encoder::new(cfg()).unwrap();
        let mut dec = H264Decoder::new().unwrap();
        let mut shown = 0;
        for n in 0..30 {
            let src = picture(320, 240, n);
            let p = enc.encode(&src).unwrap().expect("x264 codes every picture");
            assert_eq!(p.keyframe, n == 0, "only the first picture is an IDR");
            assert_eq!(p.temporal_id, 0);
            let got = dec
                .decode(&p.data)
                .unwrap()
                .expect("a picture per access unit");
            assert_eq!((got.width(), got.height()), (320, 240));
            let psnr = got.psnr_y(&src).unwrap();
            assert!(psnr > 32.0, "picture {n}: {psnr:.1} dB");
            shown += 1;
        }
        assert_eq!(shown, 30);
    }

    #[test]
    fn a_forced_keyframe_starts_a_fresh_decoder() {
        if !have_x264() {
            return;
        }
        let mut enc = X264Encoder::new(cfg()).unwrap();
        for n in 0..5 {
            enc.encode(&picture(320, 240, n)).unwrap();
        }
        enc.force_keyframe();
        let key = enc.encode(&picture(320, 240, 5)).unwrap().unwrap();
        assert!(key.keyframe);
        let next = enc.encode(&picture(320, 240, 6)).unwrap().unwrap();
        assert!(!next.keyframe);
        let mut late = H264Decoder::new().unwrap();
        assert!(
            late.decode(&key.data).unwrap().is_some(),
            "IDR carries SPS/PPS"
        );
        assert!(late.decode(&next.data).unwrap().is_some());
    }

    #[test]
    fn a_size_change_reopens_with_an_idr() {
        if !have_x264() {
            return;
        }
        let mut enc = X264Encoder::new(cfg()).unwrap();
        enc.encode(&picture(320, 240, 0)).unwrap();
        enc.encode(&picture(320, 240, 1)).unwrap();
        let p = enc.encode(&picture(640, 360, 2)).unwrap().unwrap();
        assert!(p.keyframe);
        let got = H264Decoder::new()
            .unwrap()
            .decode(&p.data)
            .unwrap()
            .unwrap();
        assert_eq!((got.width(), got.height()), (640, 360));
    }

    #[test]
    fn the_bitrate_target_holds() {
        if !have_x264() {
            return;
        }
        let mut enc = X264Encoder::new(H264EncoderConfig {
            bitrate_bps: 300_000,
            ..cfg()
        })
        .unwrap();
        let bytes: usize = (0..90)
            .filter_map(|n| enc.encode(&picture(640, 360, n * 7)).unwrap())
            .map(|p| p.data.len())
            .sum();
        let kbps = bytes as f64 * 8.0 / 3.0 / 1000.0;
        assert!(
            (150.0..450.0).contains(&kbps),
            "{kbps:.0} kbit/s for a 300 kbit/s target"
        );
    }

    #[test]
    fn every_complexity_codes_constrained_baseline() {
        if !have_x264() {
            return;
        }
        for complexity in [
            H264Complexity::Low,
            H264Complexity::Medium,
            H264Complexity::High,
        ] {
            let mut enc = X264Encoder::new(H264EncoderConfig {
                complexity,
                ..cfg()
            })
            .unwrap();
            let p = enc.encode(&picture(320, 240, 0)).unwrap().unwrap();
            let sps = p
                .data
                .windows(4)
                .position(|w| w == [0, 0, 1, 0x67])
                .unwrap()
                + 4;
            // profile_idc 66 with constraint_set1 (Constrained Baseline).
            assert_eq!(p.data[sps], 66, "{complexity:?}");
            assert_ne!(p.data[sps + 1] & 0x40, 0, "{complexity:?}");
        }
    }

    #[test]
    fn the_high_backend_codes_cabac_and_decodes() {
        if !have_x264() {
            return;
        }
        // Low + CABAC is Main (77); the presets above Low add the 8×8 transform: High (100).
        for (complexity, want) in [(H264Complexity::Low, 77), (H264Complexity::High, 100)] {
            let mut enc = X264Encoder::new(H264EncoderConfig {
                complexity,
                backend: EncoderBackend::X264High,
                ..cfg()
            })
            .unwrap();
            let mut dec = H264Decoder::with_backend(DecoderBackend::Auto).unwrap();
            for n in 0..10 {
                let src = picture(320, 240, n);
                let p = enc.encode(&src).unwrap().unwrap();
                if n == 0 {
                    let sps = p
                        .data
                        .windows(4)
                        .position(|w| w == [0, 0, 1, 0x67])
                        .unwrap();
                    assert_eq!(p.data[sps + 4], want, "{complexity:?}");
                }
                let got = dec.decode(&p.data).unwrap().expect("a picture");
                assert!(
                    got.psnr_y(&src).unwrap() > 32.0,
                    "{complexity:?} picture {n}"
                );
            }
        }
    }

    #[test]
    fn layers_and_long_term_references_are_refused() {
        for cfg in [
            H264EncoderConfig {
                temporal_layers: 2,
                ..cfg()
            },
            H264EncoderConfig {
                long_term_reference: true,
                ..cfg()
            },
        ] {
            assert!(matches!(X264Encoder::new(cfg), Err(Error::Config(_))));
        }
    }
}
