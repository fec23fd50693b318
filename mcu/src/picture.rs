//! Small PNG pictures of layouts (numbered tiles), for documentation and admin consoles.

use crate::Error;
use crate::layout::{Layout, TileRole};
use crate::text::TextRenderer;

const PALETTE: [[u8; 3]; 8] = [
    [52, 101, 164],
    [78, 154, 6],
    [196, 160, 0],
    [117, 80, 123],
    [206, 92, 0],
    [6, 152, 154],
    [164, 0, 0],
    [85, 87, 83],
];

/// Renders `layout` as an RGB picture of `w × h` with each tile numbered from 1 in
/// priority order (content tiles marked "C"), and returns it PNG-encoded.
pub fn layout_png(
    layout: &Layout,
    w: usize,
    h: usize,
    text: Option<&mut TextRenderer>,
) -> Result<Vec<u8>, Error> {
    if w < 16 || h < 16 || w > 4096 || h > 4096 {
        return Err(Error::Config(format!("picture size {w}x{h} out of range")));
    }
    let mut rgb = vec![24u8; w * h * 3];
    let mut text = text;
    for (i, t) in layout.tiles.iter().enumerate() {
        let r = t.rect.to_pixels(w, h);
        let colour = if t.role == TileRole::Content {
            [230, 230, 230]
        } else {
            PALETTE[i % PALETTE.len()]
        };
        let colour = if t.role == TileRole::Main {
            colour.map(|c| c.saturating_add(30))
        } else {
            colour
        };
        for y in r.y..(r.y + r.h).min(h) {
            for x in r.x..(r.x + r.w).min(w) {
                let edge = x == r.x || y == r.y || x + 1 == r.x + r.w || y + 1 == r.y + r.h;
                let c = if edge { [16, 16, 16] } else { colour };
                rgb[(y * w + x) * 3..][..3].copy_from_slice(&c);
            }
        }
        let Some(text) = text.as_deref_mut() else {
            continue;
        };
        let label = if t.role == TileRole::Content {
            "C".to_string()
        } else {
            (i + 1).to_string()
        };
        let px = (r.h * 3 / 5).clamp(7, 48) as u32;
        let m = text.render(&label, px, r.w);
        let (x0, y0) = (
            r.x + r.w.saturating_sub(m.w) / 2,
            r.y + r.h.saturating_sub(m.h) / 2,
        );
        let ink = if t.role == TileRole::Content {
            0u16
        } else {
            255
        };
        for my in 0..m.h {
            for mx in 0..m.w {
                let (x, y) = (x0 + mx, y0 + my);
                if x >= w || y >= h {
                    continue;
                }
                let a = u16::from(m.alpha[my * m.w + mx]);
                for c in &mut rgb[(y * w + x) * 3..][..3] {
                    *c = ((u16::from(*c) * (255 - a) + ink * a) / 255) as u8;
                }
            }
        }
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w as u32, h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc
            .write_header()
            .map_err(|e| Error::Config(format!("png: {e}")))?;
        writer
            .write_image_data(&rgb)
            .map_err(|e| Error::Config(format!("png: {e}")))?;
    }
    Ok(out)
}

/// A file name for a layout picture ("1+5" → "1p5.png").
pub fn file_name(layout: &Layout) -> String {
    let safe: String = layout
        .name
        .chars()
        .map(|c| {
            if c == '+' {
                'p'
            } else if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.png")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::LayoutSet;
    use crate::text::DEFAULT_FONT;

    #[test]
    fn png_has_tiles_in_their_places() {
        let set = LayoutSet::default();
        let l = set.get("4").expect("4");
        let mut font = TextRenderer::from_file(DEFAULT_FONT).expect("font");
        let bytes = layout_png(l, 160, 90, Some(&mut font)).expect("png");
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = dec.read_info().expect("png header");
        let mut buf = vec![0; reader.output_buffer_size().expect("size")];
        let info = reader.next_frame(&mut buf).expect("frame");
        assert_eq!((info.width, info.height), (160, 90));
        let px = |x: usize, y: usize| {
            [
                buf[(y * 160 + x) * 3],
                buf[(y * 160 + x) * 3 + 1],
                buf[(y * 160 + x) * 3 + 2],
            ]
        };
        // Corners of the four tiles carry the first four palette colours.
        assert_eq!(px(5, 5), PALETTE[0]);
        assert_eq!(px(155, 5), PALETTE[1]);
        assert_eq!(px(5, 85), PALETTE[2]);
        assert_eq!(px(155, 85), PALETTE[3]);
        // The number is drawn (white ink) in the middle of tile 1.
        let inked = (10..35)
            .flat_map(|y| (20..60).map(move |x| (x, y)))
            .filter(|(x, y)| px(*x, *y)[0] > 240)
            .count();
        assert!(inked > 10, "tile number drawn");
        assert!(layout_png(l, 4, 4, None).is_err());
        assert_eq!(file_name(set.get("1+5").expect("1+5")), "1p5.png");
    }
}
