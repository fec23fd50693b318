//! Composition of one output picture: scale each source into its tile (aspect kept),
//! draw placeholders for venues without a picture, the speaking border and name labels.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use media::codec::openh264::I420Frame;

use crate::layout::PixelRect;
use std::collections::HashMap;
use std::sync::Arc;

use crate::text::{TextMask, TextRenderer};

/// Converts 8-bit sRGB to limited-range BT.601 Y'CbCr (what H.264 decoders assume by default).
pub fn rgb_to_yuv(r: u8, g: u8, b: u8) -> [u8; 3] {
    let (r, g, b) = (f32::from(r), f32::from(g), f32::from(b));
    let y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0;
    let u = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0;
    let v = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0;
    [y.round() as u8, u.round() as u8, v.round() as u8]
}

/// How a source picture fills a tile of another shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fit {
    /// Whole picture visible, bars on two sides.
    #[default]
    Contain,
    /// Tile filled, picture edges cropped.
    Cover,
}

/// Why a tile shows a placeholder instead of video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    /// The participant publishes no video (camera off, audio-only phone).
    CameraOff,
    /// Video was there but stopped arriving or cannot be decoded.
    SignalLost,
    /// No participant assigned to this tile.
    Vacant,
}

impl Placeholder {
    fn caption(self) -> &'static str {
        match self {
            Self::CameraOff => "摄像头已关闭",
            Self::SignalLost => "视频信号中断",
            Self::Vacant => "",
        }
    }
}

/// What goes into one tile.
#[derive(Debug, Clone, Copy)]
pub enum TileContent<'a> {
    /// A decoded picture.
    Video(&'a I420Frame),
    /// A drawn placeholder.
    Placeholder(Placeholder),
}

/// One tile to draw.
#[derive(Debug, Clone, Copy)]
pub struct TileSpec<'a> {
    /// Where on the canvas.
    pub rect: PixelRect,
    /// What.
    pub content: TileContent<'a>,
    /// Name label (venue or person), drawn bottom-left.
    pub name: Option<&'a str>,
    /// Draw the speaking border.
    pub speaking: bool,
}

/// Colours of the composed picture (Y'CbCr).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Theme {
    /// Canvas and letterbox bars.
    pub background: [u8; 3],
    /// Placeholder tiles: a dark slate, never black-looking-like-frozen or green.
    pub placeholder: [u8; 3],
    /// Speaking border.
    pub speaking: [u8; 3],
}

impl Default for Theme {
    fn default() -> Self {
        Self {
            background: rgb_to_yuv(16, 16, 20),
            placeholder: rgb_to_yuv(44, 62, 80),
            speaking: rgb_to_yuv(255, 196, 0),
        }
    }
}

/// One plane's scaling job: source plane and size, destination rectangle, and the
/// factor from luma to this plane's coordinates.
struct PlaneJob<'a> {
    src: &'a [u8],
    sw: usize,
    sh: usize,
    dst: PixelRect,
    k: f64,
}

/// Draws tiles onto a canvas; keeps the scaler and the glyph cache between frames.
#[derive(Debug)]
pub struct Compositor {
    resizer: Resizer,
    text: Option<TextRenderer>,
    /// Tile fit rule.
    pub fit: Fit,
    /// Colours.
    pub theme: Theme,
    scratch: [Vec<u8>; 3],
    masks: HashMap<(String, u32, usize), Arc<TextMask>>,
}

/// Rendered lines kept; a meeting draws a few dozen names at a few sizes.
const MASK_CACHE_MAX: usize = 512;

impl Compositor {
    /// A compositor; without a font, labels and captions are left out (the tiles still draw).
    pub fn new(text: Option<TextRenderer>) -> Self {
        Self {
            resizer: Resizer::new(),
            text,
            fit: Fit::Contain,
            theme: Theme::default(),
            scratch: [Vec::new(), Vec::new(), Vec::new()],
            masks: HashMap::new(),
        }
    }

    /// Fills the canvas with the background and draws every tile, later tiles on top.
    pub fn compose(&mut self, canvas: &mut I420Frame, tiles: &[TileSpec<'_>]) {
        fill(
            canvas,
            PixelRect {
                x: 0,
                y: 0,
                w: canvas.width(),
                h: canvas.height(),
            },
            self.theme.background,
        );
        for t in tiles {
            self.draw_tile(canvas, t);
        }
    }

    /// Redraws only the tiles flagged in `redraw` (same length as `tiles`) over a canvas
    /// that `compose` drew with the same tile rectangles before. Every tile paints its
    /// whole rectangle, so the result equals a full `compose` as long as the caller also
    /// flags every later tile overlapping a flagged one.
    pub fn compose_some(
        &mut self,
        canvas: &mut I420Frame,
        tiles: &[TileSpec<'_>],
        redraw: &[bool],
    ) {
        for (t, _) in tiles.iter().zip(redraw).filter(|(_, r)| **r) {
            self.draw_tile(canvas, t);
        }
    }

    fn draw_tile(&mut self, canvas: &mut I420Frame, t: &TileSpec<'_>) {
        let rect = clip(t.rect, canvas.width(), canvas.height());
        if rect.w < 2 || rect.h < 2 {
            return;
        }
        match t.content {
            TileContent::Video(src) => self.draw_video(canvas, rect, src),
            TileContent::Placeholder(p) => self.draw_placeholder(canvas, rect, p, t.name),
        }
        if t.speaking {
            let b = ((rect.h / 60).max(2) + 1) & !1;
            draw_border(canvas, rect, b, self.theme.speaking);
        }
        if let Some(name) = t.name.filter(|n| !n.is_empty()) {
            self.draw_label(canvas, rect, name);
        }
    }

    /// A rendered line, from the cache when the same text was drawn at the same size
    /// before (labels are redrawn with every new picture of their tile).
    fn render_text(&mut self, text: &str, px: u32, max_w: usize) -> Option<Arc<TextMask>> {
        let renderer = self.text.as_mut()?;
        let key = (text.to_string(), px, max_w);
        if let Some(m) = self.masks.get(&key) {
            return Some(Arc::clone(m));
        }
        if self.masks.len() >= MASK_CACHE_MAX {
            self.masks.clear();
        }
        let m = Arc::new(renderer.render(text, px, max_w));
        self.masks.insert(key, Arc::clone(&m));
        Some(m)
    }

    fn draw_video(&mut self, canvas: &mut I420Frame, rect: PixelRect, src: &I420Frame) {
        let (sw, sh) = (src.width() as f64, src.height() as f64);
        let (tw, th) = (rect.w as f64, rect.h as f64);
        // Source crop (Cover) or destination inset (Contain), both even so chroma aligns.
        let (mut crop, mut dst) = ((0.0, 0.0, sw, sh), rect);
        match self.fit {
            Fit::Contain => {
                let s = (tw / sw).min(th / sh);
                let w = (((sw * s).round() as usize) & !1).clamp(2, rect.w);
                let h = (((sh * s).round() as usize) & !1).clamp(2, rect.h);
                dst = PixelRect {
                    x: rect.x + (((rect.w - w) / 2) & !1),
                    y: rect.y + (((rect.h - h) / 2) & !1),
                    w,
                    h,
                };
                if w < rect.w || h < rect.h {
                    fill(canvas, rect, self.theme.background);
                }
            }
            Fit::Cover => {
                let s = (tw / sw).max(th / sh);
                let (cw, ch) = (tw / s, th / s);
                crop = ((sw - cw) / 2.0, (sh - ch) / 2.0, cw, ch);
            }
        }
        let half = PixelRect {
            x: dst.x / 2,
            y: dst.y / 2,
            w: dst.w / 2,
            h: dst.h / 2,
        };
        let (sw2, sh2) = (src.width() / 2, src.height() / 2);
        let planes = [
            PlaneJob {
                src: &src.y,
                sw: src.width(),
                sh: src.height(),
                dst,
                k: 1.0,
            },
            PlaneJob {
                src: &src.u,
                sw: sw2,
                sh: sh2,
                dst: half,
                k: 0.5,
            },
            PlaneJob {
                src: &src.v,
                sw: sw2,
                sh: sh2,
                dst: half,
                k: 0.5,
            },
        ];
        let cw = canvas.width();
        for (i, job) in planes.into_iter().enumerate() {
            let PlaneJob {
                src: plane,
                sw: pw,
                sh: ph,
                dst:
                    PixelRect {
                        x: dx,
                        y: dy,
                        w: dw,
                        h: dh,
                    },
                k,
            } = job;
            let stride = if i == 0 { cw } else { cw / 2 };
            let out = match i {
                0 => &mut canvas.y,
                1 => &mut canvas.u,
                _ => &mut canvas.v,
            };
            if dw == 0 || dh == 0 {
                continue;
            }
            if pw == dw && ph == dh && self.fit == Fit::Contain {
                for row in 0..dh {
                    out[(dy + row) * stride + dx..][..dw].copy_from_slice(&plane[row * pw..][..dw]);
                }
                continue;
            }
            let scratch = &mut self.scratch[i];
            scratch.resize(dw * dh, 0);
            let Ok(src_img) = ImageRef::new(pw as u32, ph as u32, plane, PixelType::U8) else {
                continue;
            };
            let Ok(mut dst_img) =
                Image::from_slice_u8(dw as u32, dh as u32, scratch, PixelType::U8)
            else {
                continue;
            };
            let opts = ResizeOptions::new()
                .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
                .crop(crop.0 * k, crop.1 * k, crop.2 * k, crop.3 * k);
            if self.resizer.resize(&src_img, &mut dst_img, &opts).is_err() {
                continue;
            }
            for row in 0..dh {
                out[(dy + row) * stride + dx..][..dw].copy_from_slice(&scratch[row * dw..][..dw]);
            }
        }
    }

    fn draw_placeholder(
        &mut self,
        canvas: &mut I420Frame,
        rect: PixelRect,
        p: Placeholder,
        name: Option<&str>,
    ) {
        let colour = if p == Placeholder::Vacant {
            self.theme.background
        } else {
            self.theme.placeholder
        };
        fill(canvas, rect, colour);
        let caption = p.caption();
        if caption.is_empty() {
            return;
        }
        // The venue's name large in the middle, the reason under it: a lost venue is
        // recognisable and obviously not a frozen picture.
        let px = (rect.h / 8).clamp(10, 72) as u32;
        let mut y = rect.y + rect.h / 2 - px as usize;
        if let Some(n) = name {
            let Some(m) = self.render_text(n, px, rect.w.saturating_sub(8)) else {
                return;
            };
            blit_text(
                canvas,
                &m,
                rect.x + rect.w.saturating_sub(m.w) / 2,
                y,
                [235, 128, 128],
            );
            y += m.h + px as usize / 4;
        }
        let Some(m) = self.render_text(caption, (px * 2 / 3).max(8), rect.w.saturating_sub(8))
        else {
            return;
        };
        blit_text(
            canvas,
            &m,
            rect.x + rect.w.saturating_sub(m.w) / 2,
            y,
            [180, 128, 128],
        );
    }

    fn draw_label(&mut self, canvas: &mut I420Frame, rect: PixelRect, name: &str) {
        let px = (rect.h / 14).clamp(10, 40) as u32;
        let pad = (px as usize / 4).max(2) & !1;
        let Some(m) = self.render_text(name, px, rect.w.saturating_sub(4 * pad)) else {
            return;
        };
        if m.w == 0 {
            return;
        }
        let bw = (m.w + 2 * pad + 1) & !1;
        let bh = (m.h + 2 * pad + 1) & !1;
        let bx = rect.x + pad;
        let Some(by) = (rect.y + rect.h).checked_sub(bh + pad) else {
            return;
        };
        let by = by & !1;
        if by < rect.y {
            return;
        }
        darken(
            canvas,
            PixelRect {
                x: bx,
                y: by,
                w: bw.min(rect.w - pad),
                h: bh,
            },
        );
        blit_text(canvas, &m, bx + pad, by + pad, [235, 128, 128]);
    }
}

fn clip(r: PixelRect, w: usize, h: usize) -> PixelRect {
    let x = r.x.min(w) & !1;
    let y = r.y.min(h) & !1;
    PixelRect {
        x,
        y,
        w: (r.w.min(w - x)) & !1,
        h: (r.h.min(h - y)) & !1,
    }
}

/// Fills a rectangle (even origin and size) with one colour.
pub fn fill(canvas: &mut I420Frame, r: PixelRect, c: [u8; 3]) {
    let r = clip(r, canvas.width(), canvas.height());
    let (w, cw) = (canvas.width(), canvas.width() / 2);
    for row in r.y..r.y + r.h {
        canvas.y[row * w + r.x..][..r.w].fill(c[0]);
    }
    for row in r.y / 2..(r.y + r.h) / 2 {
        canvas.u[row * cw + r.x / 2..][..r.w / 2].fill(c[1]);
        canvas.v[row * cw + r.x / 2..][..r.w / 2].fill(c[2]);
    }
}

fn draw_border(canvas: &mut I420Frame, r: PixelRect, b: usize, c: [u8; 3]) {
    let b = b.min(r.w / 2).min(r.h / 2) & !1;
    if b == 0 {
        return;
    }
    fill(
        canvas,
        PixelRect {
            x: r.x,
            y: r.y,
            w: r.w,
            h: b,
        },
        c,
    );
    fill(
        canvas,
        PixelRect {
            x: r.x,
            y: r.y + r.h - b,
            w: r.w,
            h: b,
        },
        c,
    );
    fill(
        canvas,
        PixelRect {
            x: r.x,
            y: r.y,
            w: b,
            h: r.h,
        },
        c,
    );
    fill(
        canvas,
        PixelRect {
            x: r.x + r.w - b,
            y: r.y,
            w: b,
            h: r.h,
        },
        c,
    );
}

/// Halves luma and pulls chroma to grey: a translucent box that keeps white text readable.
fn darken(canvas: &mut I420Frame, r: PixelRect) {
    let r = clip(r, canvas.width(), canvas.height());
    let (w, cw) = (canvas.width(), canvas.width() / 2);
    for row in r.y..r.y + r.h {
        for p in &mut canvas.y[row * w + r.x..][..r.w] {
            *p = 8 + *p / 2;
        }
    }
    for row in r.y / 2..(r.y + r.h) / 2 {
        for plane in [&mut canvas.u, &mut canvas.v] {
            for p in &mut plane[row * cw + r.x / 2..][..r.w / 2] {
                *p = ((u16::from(*p) + 128) / 2) as u8;
            }
        }
    }
}

/// Blends a coverage mask in one colour (luma only; labels are neutral grey/white).
fn blit_text(canvas: &mut I420Frame, m: &TextMask, x: usize, y: usize, c: [u8; 3]) {
    let (w, h) = (canvas.width(), canvas.height());
    for my in 0..m.h {
        let cy = y + my;
        if cy >= h {
            break;
        }
        for mx in 0..m.w {
            let cx = x + mx;
            if cx >= w {
                break;
            }
            let a = u16::from(m.alpha[my * m.w + mx]);
            if a == 0 {
                continue;
            }
            let p = &mut canvas.y[cy * w + cx];
            *p = ((u16::from(*p) * (255 - a) + u16::from(c[0]) * a) / 255) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::LayoutSet;
    use crate::text::{DEFAULT_FONT, TextRenderer};

    const COLOURS: [[u8; 3]; 4] = [[82, 90, 240], [145, 54, 34], [41, 240, 110], [210, 16, 146]];

    fn mean(canvas: &I420Frame, r: PixelRect) -> [f64; 3] {
        let (w, cw) = (canvas.width(), canvas.width() / 2);
        let (mut s, mut n, mut sc, mut nc) = ([0.0; 3], 0.0, [0.0; 2], 0.0);
        for y in r.y..r.y + r.h {
            for x in r.x..r.x + r.w {
                s[0] += f64::from(canvas.y[y * w + x]);
                n += 1.0;
            }
        }
        for y in r.y / 2..(r.y + r.h) / 2 {
            for x in r.x / 2..(r.x + r.w) / 2 {
                sc[0] += f64::from(canvas.u[y * cw + x]);
                sc[1] += f64::from(canvas.v[y * cw + x]);
                nc += 1.0;
            }
        }
        s[1] = sc[0];
        s[2] = sc[1];
        [s[0] / n, s[1] / nc, s[2] / nc]
    }

    fn inner(r: PixelRect) -> PixelRect {
        PixelRect {
            x: (r.x + r.w / 4) & !1,
            y: (r.y + r.h / 4) & !1,
            w: (r.w / 2) & !1,
            h: (r.h / 4) & !1,
        }
    }

    #[test]
    fn each_source_colour_lands_in_its_tile() {
        let layouts = LayoutSet::default();
        let l = layouts.get("4").expect("4");
        // Different sizes and shapes: 4:3, 16:9, odd-ish, tiny.
        let sizes = [(640, 480), (1280, 720), (350, 198), (64, 36)];
        let srcs: Vec<_> = sizes
            .iter()
            .zip(COLOURS)
            .map(|((w, h), c)| I420Frame::filled(*w, *h, c).expect("src"))
            .collect();
        let mut canvas = I420Frame::filled(1280, 720, [0, 128, 128]).expect("canvas");
        for fit in [Fit::Contain, Fit::Cover] {
            let mut comp = Compositor::new(None);
            comp.fit = fit;
            let rects: Vec<_> = l
                .tiles
                .iter()
                .map(|t| t.rect.to_pixels(1280, 720))
                .collect();
            let tiles: Vec<_> = rects
                .iter()
                .zip(&srcs)
                .map(|(r, s)| TileSpec {
                    rect: *r,
                    content: TileContent::Video(s),
                    name: None,
                    speaking: false,
                })
                .collect();
            comp.compose(&mut canvas, &tiles);
            for (r, c) in rects.iter().zip(COLOURS) {
                let m = mean(&canvas, inner(*r));
                for k in 0..3 {
                    assert!(
                        (m[k] - f64::from(c[k])).abs() < 3.0,
                        "{fit:?} tile {r:?}: {m:?} vs {c:?}"
                    );
                }
            }
        }
        // Contain: a 4:3 source in a 16:9 tile leaves background bars at the sides.
        let mut comp = Compositor::new(None);
        let r = l.tiles[0].rect.to_pixels(1280, 720);
        comp.compose(
            &mut canvas,
            &[TileSpec {
                rect: r,
                content: TileContent::Video(&srcs[0]),
                name: None,
                speaking: false,
            }],
        );
        let bar = mean(
            &canvas,
            PixelRect {
                x: r.x,
                y: r.y + 100,
                w: 20,
                h: 100,
            },
        );
        assert!(
            (bar[0] - f64::from(comp.theme.background[0])).abs() < 1.0,
            "bar {bar:?}"
        );
    }

    #[test]
    fn placeholder_border_and_chinese_label() {
        let font = TextRenderer::from_file(DEFAULT_FONT).expect("font");
        let mut comp = Compositor::new(Some(font));
        let mut canvas = I420Frame::filled(640, 360, [0, 128, 128]).expect("canvas");
        let src = I420Frame::filled(320, 180, [60, 128, 128]).expect("src");
        let left = PixelRect {
            x: 0,
            y: 0,
            w: 320,
            h: 180,
        };
        let right = PixelRect {
            x: 320,
            y: 0,
            w: 320,
            h: 180,
        };
        comp.compose(
            &mut canvas,
            &[
                TileSpec {
                    rect: left,
                    content: TileContent::Video(&src),
                    name: Some("红旗村"),
                    speaking: true,
                },
                TileSpec {
                    rect: right,
                    content: TileContent::Placeholder(Placeholder::CameraOff),
                    name: Some("城关镇"),
                    speaking: false,
                },
            ],
        );
        // Border in the speaking colour along the top edge of the left tile.
        assert_eq!(canvas.y[320 / 2], comp.theme.speaking[0]);
        // Label: bright text pixels in the bottom-left corner where the source is dark.
        let bright = (120..180)
            .flat_map(|y| (0..120).map(move |x| (x, y)))
            .filter(|(x, y)| canvas.y[y * 640 + x] > 150);
        assert!(bright.count() > 30, "label text drawn");
        // Placeholder: slate colour (not green, not black) with caption text.
        let m = mean(
            &canvas,
            PixelRect {
                x: 330,
                y: 4,
                w: 60,
                h: 20,
            },
        );
        let p = comp.theme.placeholder;
        assert!(
            (m[1] - f64::from(p[1])).abs() < 2.0 && (m[2] - f64::from(p[2])).abs() < 2.0,
            "{m:?}"
        );
        assert!(m[1] > 128.0, "bluish, not green");
        let text_px = (60..140)
            .flat_map(|y| (320..640).map(move |x| (x, y)))
            .filter(|(x, y)| canvas.y[y * 640 + x] > 150);
        assert!(text_px.count() > 50, "name and caption on the placeholder");
    }
}
