//! Name labels: text rasterised from a real TrueType/OpenType font, glyphs cached.

use std::collections::HashMap;

use ab_glyph::{Font, FontVec, PxScale, ScaleFont};

use crate::Error;

/// The Debian CJK font the MCU uses by default (`fonts-wqy-microhei`).
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc";

#[derive(Debug, Clone)]
struct Glyph {
    /// Coverage 0..=255, `w × h`.
    mask: Vec<u8>,
    w: usize,
    h: usize,
    /// Offset of the mask from the pen position (x) and the baseline (y).
    left: i32,
    top: i32,
    advance: f32,
}

/// A coverage mask of a rendered string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextMask {
    /// Width in pixels.
    pub w: usize,
    /// Height in pixels.
    pub h: usize,
    /// Coverage 0..=255, row-major.
    pub alpha: Vec<u8>,
}

/// A font with a per-(character, size) glyph cache: names repeat every frame, so each
/// glyph is rasterised once.
pub struct TextRenderer {
    font: FontVec,
    cache: HashMap<(char, u32), Glyph>,
}

impl std::fmt::Debug for TextRenderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextRenderer")
            .field("cached_glyphs", &self.cache.len())
            .finish()
    }
}

impl TextRenderer {
    /// Loads face 0 of a font file (TTF, OTF or a TTC collection).
    pub fn from_file(path: &str) -> Result<Self, Error> {
        let bytes = std::fs::read(path).map_err(|e| Error::Font(format!("{path}: {e}")))?;
        Self::from_bytes(bytes)
    }

    /// Parses font bytes (face 0 of a collection).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, Error> {
        let font =
            FontVec::try_from_vec_and_index(bytes, 0).map_err(|e| Error::Font(e.to_string()))?;
        Ok(Self {
            font,
            cache: HashMap::new(),
        })
    }

    /// Glyphs rasterised so far.
    pub fn cached_glyphs(&self) -> usize {
        self.cache.len()
    }

    fn glyph(&mut self, c: char, px: u32) -> &Glyph {
        let font = &self.font;
        self.cache.entry((c, px)).or_insert_with(|| {
            let scaled = font.as_scaled(PxScale::from(px as f32));
            let id = font.glyph_id(c);
            let advance = scaled.h_advance(id);
            let g = id.with_scale_and_position(PxScale::from(px as f32), ab_glyph::point(0.0, 0.0));
            match font.outline_glyph(g) {
                Some(o) => {
                    let b = o.px_bounds();
                    let (w, h) = (b.width().max(0.0) as usize, b.height().max(0.0) as usize);
                    let mut mask = vec![0u8; w * h];
                    o.draw(|x, y, c| {
                        let (x, y) = (x as usize, y as usize);
                        if x < w && y < h {
                            mask[y * w + x] = (c.clamp(0.0, 1.0) * 255.0) as u8;
                        }
                    });
                    Glyph {
                        mask,
                        w,
                        h,
                        left: b.min.x as i32,
                        top: b.min.y as i32,
                        advance,
                    }
                }
                // Space and other blank glyphs only move the pen.
                None => Glyph {
                    mask: Vec::new(),
                    w: 0,
                    h: 0,
                    left: 0,
                    top: 0,
                    advance,
                },
            }
        })
    }

    /// Renders one line at `px` pixels per em, clipped to `max_w`.
    pub fn render(&mut self, text: &str, px: u32, max_w: usize) -> TextMask {
        let px = px.clamp(6, 200);
        let scaled = self.font.as_scaled(PxScale::from(px as f32));
        let ascent = scaled.ascent();
        let h = (ascent - scaled.descent()).ceil().max(1.0) as usize;
        let baseline = ascent.round() as i32;
        let mut glyphs = Vec::new();
        let mut pen = 0.0f32;
        for c in text.chars().filter(|c| !c.is_control()) {
            let g = self.glyph(c, px).clone();
            if (pen + g.advance).ceil() as usize > max_w {
                break;
            }
            glyphs.push((pen, g.clone()));
            pen += g.advance;
        }
        let w = (pen.ceil() as usize).min(max_w);
        let mut alpha = vec![0u8; w * h];
        for (x0, g) in glyphs {
            for gy in 0..g.h {
                let y = baseline + g.top + gy as i32;
                if y < 0 || y as usize >= h {
                    continue;
                }
                for gx in 0..g.w {
                    let x = x0.round() as i32 + g.left + gx as i32;
                    if x < 0 || x as usize >= w {
                        continue;
                    }
                    let d = &mut alpha[y as usize * w + x as usize];
                    *d = (*d).max(g.mask[gy * g.w + gx]);
                }
            }
        }
        TextMask { w, h, alpha }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chinese_name_renders_pixels_and_caches_glyphs() {
        let mut r = TextRenderer::from_file(DEFAULT_FONT).expect("fonts-wqy-microhei installed");
        let m = r.render("城关镇会场 王书记", 32, 1000);
        assert!(m.w > 32 * 6 && m.h >= 32, "{}x{}", m.w, m.h);
        let inked = m.alpha.iter().filter(|a| **a > 128).count();
        assert!(inked > 200, "only {inked} inked pixels");
        let cached = r.cached_glyphs();
        let again = r.render("城关镇会场 王书记", 32, 1000);
        assert_eq!(again, m);
        assert_eq!(r.cached_glyphs(), cached, "second render reuses the cache");
        // A glyph the font lacks and control characters do not panic.
        let _ = r.render("\u{10FFFF}\n\t", 20, 100);
        assert!(r.render("很长的名字很长的名字", 40, 100).w <= 100);
    }

    #[test]
    fn bad_font_is_an_error() {
        assert!(TextRenderer::from_bytes(vec![1, 2, 3]).is_err());
        assert!(TextRenderer::from_file("/nonexistent.ttf").is_err());
    }
}
