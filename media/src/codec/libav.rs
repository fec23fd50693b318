//! H.264 decoding with FFmpeg's libavcodec, loaded at run time.
//!
//! The MCU decodes every tile of every meeting; libavcodec's H.264 decoder does that in
//! about a third less CPU than OpenH264's (`docs/mcu.md`). It is not linked: the library is
//! opened with `dlopen` when a decoder is first asked for, so the build needs neither
//! FFmpeg's headers nor bindgen, and a host without FFmpeg falls back to OpenH264
//! ([`crate::codec::openh264::H264Decoder`] picks the backend). Debian's libavcodec is
//! built with GPL parts enabled; using it makes a deployment's binary-plus-libraries
//! subject to the GPL, which is why the backend can be turned off.
//!
//! Only a handful of entry points are used, all stable since FFmpeg 4, and only the
//! leading fields of `AVPacket` and `AVFrame`, whose layout has not changed in FFmpeg
//! 4 to 8 (libavcodec 58–62).
// FFI by hand: every `unsafe` block below states the invariant it relies on.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int, c_void};
use std::ptr;
use std::sync::OnceLock;

use libloading::Library;

use crate::Error;
use crate::codec::openh264::{I420Frame, pack_plane};

/// `AV_CODEC_ID_H264`.
const CODEC_ID_H264: c_int = 27;
/// `AV_PIX_FMT_YUV420P`, `AV_PIX_FMT_YUVJ420P`.
const PIX_FMT_YUV420P: c_int = 0;
const PIX_FMT_YUVJ420P: c_int = 12;
/// `AVERROR(EAGAIN)` on Linux.
const AVERROR_EAGAIN: c_int = -11;

/// Leading fields of `AVPacket` (libavcodec/packet.h).
#[repr(C)]
struct AvPacketHead {
    buf: *mut c_void,
    pts: i64,
    dts: i64,
    data: *mut u8,
    size: c_int,
}

/// Leading fields of `AVFrame` (libavutil/frame.h).
#[repr(C)]
struct AvFrameHead {
    data: [*mut u8; 8],
    linesize: [c_int; 8],
    extended_data: *mut *mut u8,
    width: c_int,
    height: c_int,
    nb_samples: c_int,
    format: c_int,
}

type FindDecoder = unsafe extern "C" fn(c_int) -> *const c_void;
type AllocContext = unsafe extern "C" fn(*const c_void) -> *mut c_void;
type Open2 = unsafe extern "C" fn(*mut c_void, *const c_void, *mut *mut c_void) -> c_int;
type FreeContext = unsafe extern "C" fn(*mut *mut c_void);
type SendPacket = unsafe extern "C" fn(*mut c_void, *const AvPacketHead) -> c_int;
type ReceiveFrame = unsafe extern "C" fn(*mut c_void, *mut AvFrameHead) -> c_int;
type PacketAlloc = unsafe extern "C" fn() -> *mut AvPacketHead;
type PacketFree = unsafe extern "C" fn(*mut *mut AvPacketHead);
type FrameAlloc = unsafe extern "C" fn() -> *mut AvFrameHead;
type FrameFree = unsafe extern "C" fn(*mut *mut AvFrameHead);
type FrameUnref = unsafe extern "C" fn(*mut AvFrameHead);
type DictSet = unsafe extern "C" fn(*mut *mut c_void, *const c_char, *const c_char, c_int) -> c_int;
type DictFree = unsafe extern "C" fn(*mut *mut c_void);
type Strerror = unsafe extern "C" fn(c_int, *mut c_char, usize) -> c_int;
type LogSetLevel = unsafe extern "C" fn(c_int);

/// `AV_LOG_QUIET`: libavcodec would print every concealed macroblock of a lossy input to
/// stderr; failures reach the caller as return codes and are logged there.
const LOG_QUIET: c_int = -8;

/// The entry points, resolved once per process.
struct Api {
    find_decoder: FindDecoder,
    alloc_context: AllocContext,
    open2: Open2,
    free_context: FreeContext,
    send_packet: SendPacket,
    receive_frame: ReceiveFrame,
    packet_alloc: PacketAlloc,
    packet_free: PacketFree,
    frame_alloc: FrameAlloc,
    frame_free: FrameFree,
    frame_unref: FrameUnref,
    dict_set: DictSet,
    dict_free: DictFree,
    strerror: Strerror,
    /// Keeps the function pointers above valid for the life of the process.
    _libs: (Library, Library),
}

/// (libavcodec, libavutil) sonames of the same FFmpeg release, newest first.
const SONAMES: [(&str, &str); 5] = [
    ("libavcodec.so.62", "libavutil.so.60"),
    ("libavcodec.so.61", "libavutil.so.59"),
    ("libavcodec.so.60", "libavutil.so.58"),
    ("libavcodec.so.59", "libavutil.so.57"),
    ("libavcodec.so.58", "libavutil.so.56"),
];

fn load() -> Result<Api, String> {
    let mut last = String::from("no libavcodec found");
    for (codec, util) in SONAMES {
        // SAFETY: loading a system library runs its initialisers; FFmpeg's have no
        // preconditions.
        let libs = unsafe { (Library::new(codec), Library::new(util)) };
        let (c, u) = match libs {
            (Ok(c), Ok(u)) => (c, u),
            (Err(e), _) | (_, Err(e)) => {
                last = e.to_string();
                continue;
            }
        };
        macro_rules! sym {
            ($lib:expr, $name:literal) => {
                // SAFETY: the type is the function's C prototype in every release listed in
                // SONAMES; the library outlives the pointer (it is kept in `Api`).
                *unsafe { $lib.get(concat!($name, "\0").as_bytes()) }.map_err(|e| e.to_string())?
            };
        }
        let set_level: LogSetLevel = sym!(u, "av_log_set_level");
        // SAFETY: sets a process-wide integer; Huitong uses libav for nothing else.
        unsafe { set_level(LOG_QUIET) };
        return Ok(Api {
            find_decoder: sym!(c, "avcodec_find_decoder"),
            alloc_context: sym!(c, "avcodec_alloc_context3"),
            open2: sym!(c, "avcodec_open2"),
            free_context: sym!(c, "avcodec_free_context"),
            send_packet: sym!(c, "avcodec_send_packet"),
            receive_frame: sym!(c, "avcodec_receive_frame"),
            packet_alloc: sym!(c, "av_packet_alloc"),
            packet_free: sym!(c, "av_packet_free"),
            frame_alloc: sym!(u, "av_frame_alloc"),
            frame_free: sym!(u, "av_frame_free"),
            frame_unref: sym!(u, "av_frame_unref"),
            dict_set: sym!(u, "av_dict_set"),
            dict_free: sym!(u, "av_dict_free"),
            strerror: sym!(u, "av_strerror"),
            _libs: (c, u),
        });
    }
    Err(last)
}

fn api() -> Result<&'static Api, Error> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(load).as_ref().map_err(|e| Error::Codec {
        codec: "h264",
        message: format!("libavcodec unavailable: {e}"),
    })
}

/// Whether libavcodec could be loaded on this host.
pub fn available() -> bool {
    api().is_ok()
}

fn av_err(api: &Api, what: &str, code: c_int) -> Error {
    let mut buf = [0 as c_char; 128];
    // SAFETY: the buffer is writable for its length; av_strerror NUL-terminates.
    unsafe { (api.strerror)(code, buf.as_mut_ptr(), buf.len()) };
    // SAFETY: NUL-terminated by av_strerror (a zeroed buffer otherwise).
    let msg = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
    Error::Codec {
        codec: "h264",
        message: format!("libavcodec {what}: {msg} ({code})"),
    }
}

/// One libavcodec H.264 decoder, single-threaded and without output delay.
pub struct LibavH264Decoder {
    api: &'static Api,
    ctx: *mut c_void,
    pkt: *mut AvPacketHead,
    frame: *mut AvFrameHead,
}

// SAFETY: the context, packet and frame are owned by this value alone and libavcodec
// keeps no thread affinity for a single-threaded decoder.
unsafe impl Send for LibavH264Decoder {}

impl std::fmt::Debug for LibavH264Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibavH264Decoder").finish_non_exhaustive()
    }
}

impl LibavH264Decoder {
    /// Opens a decoder; fails when libavcodec is not installed or has no H.264 decoder.
    pub fn new() -> Result<Self, Error> {
        let api = api()?;
        // SAFETY: plain FFmpeg API use; every pointer is checked before use and owned by
        // the returned value, which frees it in Drop.
        unsafe {
            let codec = (api.find_decoder)(CODEC_ID_H264);
            if codec.is_null() {
                return Err(Error::Codec {
                    codec: "h264",
                    message: "libavcodec has no H.264 decoder".into(),
                });
            }
            let dec = Self {
                api,
                ctx: (api.alloc_context)(codec),
                pkt: (api.packet_alloc)(),
                frame: (api.frame_alloc)(),
            };
            if dec.ctx.is_null() || dec.pkt.is_null() || dec.frame.is_null() {
                return Err(Error::Codec {
                    codec: "h264",
                    message: "libavcodec allocation failed".into(),
                });
            }
            // One thread: the MCU runs one mixing thread per meeting and scales by
            // meetings; frame threads would also hold pictures back. `low_delay` makes
            // every decoded picture come out at once, as a conferencing stream needs.
            let mut opts: *mut c_void = ptr::null_mut();
            (api.dict_set)(&mut opts, c"threads".as_ptr(), c"1".as_ptr(), 0);
            (api.dict_set)(&mut opts, c"flags".as_ptr(), c"low_delay".as_ptr(), 0);
            let rc = (api.open2)(dec.ctx, codec, &mut opts);
            (api.dict_free)(&mut opts);
            if rc < 0 {
                return Err(av_err(api, "open", rc));
            }
            Ok(dec)
        }
    }

    /// Decodes one Annex-B access unit. `Ok(None)` when no picture came out (parameter
    /// sets only, or a bitstream the decoder skipped).
    pub fn decode(&mut self, access_unit: &[u8]) -> Result<Option<I420Frame>, Error> {
        let size = c_int::try_from(access_unit.len()).map_err(|_| Error::Codec {
            codec: "h264",
            message: "access unit too large".into(),
        })?;
        if size == 0 {
            return Ok(None);
        }
        let api = self.api;
        // SAFETY: the packet is not reference-counted (`buf` is null), so
        // avcodec_send_packet copies `size` bytes from `data` (adding its own padding)
        // before it returns; the slice outlives the call.
        let rc = unsafe {
            (*self.pkt).buf = ptr::null_mut();
            (*self.pkt).data = access_unit.as_ptr().cast_mut();
            (*self.pkt).size = size;
            let rc = (api.send_packet)(self.ctx, self.pkt);
            (*self.pkt).data = ptr::null_mut();
            (*self.pkt).size = 0;
            rc
        };
        if rc < 0 && rc != AVERROR_EAGAIN {
            return Err(av_err(api, "decode", rc));
        }
        let mut out = None;
        loop {
            // SAFETY: the frame is ours; a picture received is read and then unreferenced.
            let rc = unsafe { (api.receive_frame)(self.ctx, self.frame) };
            if rc < 0 {
                if rc == AVERROR_EAGAIN || out.is_some() {
                    break;
                }
                return Err(av_err(api, "decode", rc));
            }
            // SAFETY: a received frame has valid planes of `linesize` bytes per row for
            // its size and format; it stays referenced until the unref below.
            let pic = unsafe { copy_out(&*self.frame) };
            unsafe { (api.frame_unref)(self.frame) };
            out = Some(pic?);
        }
        Ok(out)
    }
}

/// Copies a decoded 4:2:0 picture into packed planes (odd sizes rounded down).
///
/// # Safety
/// `f` must be a picture libavcodec returned and has not released.
unsafe fn copy_out(f: &AvFrameHead) -> Result<I420Frame, Error> {
    if f.format != PIX_FMT_YUV420P && f.format != PIX_FMT_YUVJ420P {
        return Err(Error::Codec {
            codec: "h264",
            message: format!("libavcodec returned pixel format {} (not 4:2:0)", f.format),
        });
    }
    let (w, h) = (
        usize::try_from(f.width).unwrap_or(0) & !1,
        usize::try_from(f.height).unwrap_or(0) & !1,
    );
    if w < 2 || h < 2 {
        return Err(Error::Codec {
            codec: "h264",
            message: "decoded picture has no pixels".into(),
        });
    }
    let plane = |i: usize, pw: usize, ph: usize| -> Result<Vec<u8>, Error> {
        let stride = f.linesize[i];
        if f.data[i].is_null() || stride < 0 || (stride as usize) < pw {
            return Err(Error::Codec {
                codec: "h264",
                message: "libavcodec returned a picture without planes".into(),
            });
        }
        let stride = stride as usize;
        // SAFETY: the plane has at least `ph` rows of `stride` bytes (`ph` is at most its
        // height, rounded down to even), and `pw <= stride`: the last row's `pw` bytes end
        // inside it.
        let bytes = unsafe { std::slice::from_raw_parts(f.data[i], stride * (ph - 1) + pw) };
        Ok(pack_plane(bytes, stride, pw, ph))
    };
    I420Frame::from_planes(
        w,
        h,
        plane(0, w, h)?,
        plane(1, w / 2, h / 2)?,
        plane(2, w / 2, h / 2)?,
    )
}

impl Drop for LibavH264Decoder {
    fn drop(&mut self) {
        // SAFETY: each pointer was allocated by the matching FFmpeg allocator (or is
        // null, which the free functions accept) and is not used after this.
        unsafe {
            (self.api.frame_free)(&mut self.frame);
            (self.api.packet_free)(&mut self.pkt);
            (self.api.free_context)(&mut self.ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::openh264::{
        H264Decoder, H264Encoder, H264EncoderConfig, tests::moving_pattern,
    };

    /// libavcodec is optional at run time; `scripts/test` installs it and sets
    /// `HUITONG_REQUIRE_LIBAV=1`, which turns its absence into a failure.
    fn have_libav() -> bool {
        if available() {
            return true;
        }
        assert!(
            std::env::var("HUITONG_REQUIRE_LIBAV").as_deref() != Ok("1"),
            "HUITONG_REQUIRE_LIBAV=1 but libavcodec does not load: {:?}",
            api().err()
        );
        eprintln!("libavcodec not installed: skipped");
        false
    }

    /// H.264 decoding is bit-exact by specification: both libraries must return the very
    /// same pictures, including across a forced keyframe and two temporal layers.
    #[test]
    fn decodes_exactly_what_openh264_decodes() {
        if !have_libav() {
            return;
        }
        let (w, h) = (640, 360);
        let mut enc = H264Encoder::new(H264EncoderConfig {
            bitrate_bps: 1_000_000,
            allow_frame_skip: false,
            temporal_layers: 2,
            ..Default::default()
        })
        .expect("encoder");
        let mut reference = H264Decoder::new().expect("openh264");
        let mut dec = LibavH264Decoder::new().expect("libav");
        for t in 0..30 {
            if t == 17 {
                enc.force_keyframe();
            }
            let au = enc
                .encode(&moving_pattern(w, h, t))
                .expect("encode")
                .expect("no skip");
            let want = reference
                .decode(&au.data)
                .expect("openh264 decode")
                .expect("picture");
            let got = dec
                .decode(&au.data)
                .expect("libav decode")
                .expect("a picture per access unit, at once");
            assert_eq!((got.width(), got.height()), (w, h));
            assert!(got == want, "picture {t} differs from OpenH264's");
        }
    }

    #[test]
    fn garbage_and_truncation_are_errors_or_nothing_never_a_crash() {
        if !have_libav() {
            return;
        }
        let mut dec = LibavH264Decoder::new().expect("libav");
        assert!(dec.decode(&[]).expect("empty").is_none());
        let _ = dec.decode(&[0, 0, 0, 1, 0x65, 0xff, 0x00, 0x12]);
        let _ = dec.decode(&[0xde; 4000]);
        let mut enc = H264Encoder::new(H264EncoderConfig::default()).expect("encoder");
        let au = enc
            .encode(&moving_pattern(320, 180, 0))
            .expect("encode")
            .expect("picture");
        let _ = dec.decode(&au.data[..au.data.len() / 2]);
        // The decoder is still usable: a whole keyframe decodes.
        enc.force_keyframe();
        let au = enc
            .encode(&moving_pattern(320, 180, 1))
            .expect("encode")
            .expect("picture");
        let pic = dec.decode(&au.data).expect("decode").expect("picture");
        assert_eq!((pic.width(), pic.height()), (320, 180));
    }

    #[test]
    fn auto_backend_prefers_libav() {
        let d = H264Decoder::with_backend(crate::codec::openh264::DecoderBackend::Auto)
            .expect("decoder");
        let want = if available() {
            crate::codec::openh264::DecoderBackend::Libav
        } else {
            crate::codec::openh264::DecoderBackend::OpenH264
        };
        assert_eq!(d.backend(), want);
    }
}
