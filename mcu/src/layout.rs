//! Multi-picture layouts: named sets of tiles in normalised canvas coordinates.
//!
//! Tile 0 is the layout's main tile where it has one (speaker-focus, PiP,
//! presentation): modes put the speaker, the named venue or the content there.
//! Tiles later in the list are drawn on top of earlier ones (PiP insets).

use serde::{Deserialize, Serialize};

use crate::Error;

/// A rectangle in canvas fractions (0..=1 on both axes).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rect {
    /// Left edge.
    pub x: f32,
    /// Top edge.
    pub y: f32,
    /// Width.
    pub w: f32,
    /// Height.
    pub h: f32,
}

impl Rect {
    const fn new(x: f32, y: f32, w: f32, h: f32) -> Self {
        Self { x, y, w, h }
    }

    /// The rectangle in whole pixels of a `cw × ch` canvas, snapped to even
    /// coordinates so 4:2:0 chroma lines up with luma.
    pub fn to_pixels(&self, cw: usize, ch: usize) -> PixelRect {
        let snap = |v: f32, full: usize| -> usize {
            ((v.clamp(0.0, 1.0) * full as f32).round() as usize) & !1
        };
        let x0 = snap(self.x, cw);
        let y0 = snap(self.y, ch);
        let x1 = snap(self.x + self.w, cw).max(x0);
        let y1 = snap(self.y + self.h, ch).max(y0);
        PixelRect {
            x: x0,
            y: y0,
            w: x1 - x0,
            h: y1 - y0,
        }
    }

    fn valid(&self) -> bool {
        let ok = |v: f32| v.is_finite() && (-1e-4..=1.0 + 1e-4).contains(&v);
        ok(self.x)
            && ok(self.y)
            && ok(self.x + self.w)
            && ok(self.y + self.h)
            && self.w > 0.0
            && self.h > 0.0
    }
}

/// A rectangle in pixels (even origin and size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelRect {
    /// Left.
    pub x: usize,
    /// Top.
    pub y: usize,
    /// Width.
    pub w: usize,
    /// Height.
    pub h: usize,
}

/// What a tile is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TileRole {
    /// An ordinary venue tile.
    #[default]
    Normal,
    /// The big tile (speaker, named venue, polled venue).
    Main,
    /// Shared content (presentation layouts).
    Content,
}

/// One picture position.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Tile {
    /// Where.
    pub rect: Rect,
    /// What for.
    #[serde(default)]
    pub role: TileRole,
}

/// A named layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Layout {
    /// Name used by terminals and the host ("4", "1+5", "presentation+strip-bottom").
    pub name: String,
    /// Tiles in priority order.
    pub tiles: Vec<Tile>,
}

impl Layout {
    /// Checks the tiles are inside the canvas and there is at least one.
    pub fn validate(&self) -> Result<(), Error> {
        if self.name.is_empty() || self.tiles.is_empty() || self.tiles.len() > MAX_TILES {
            return Err(Error::BadLayout(format!(
                "layout {:?} needs 1..={MAX_TILES} tiles",
                self.name
            )));
        }
        if let Some(i) = self.tiles.iter().position(|t| !t.rect.valid()) {
            return Err(Error::BadLayout(format!(
                "layout {:?}: tile {i} is outside the canvas",
                self.name
            )));
        }
        Ok(())
    }

    /// Index of the tile that holds content, if the layout has one.
    pub fn content_tile(&self) -> Option<usize> {
        self.tiles.iter().position(|t| t.role == TileRole::Content)
    }
}

/// Most tiles a layout may have (36 pictures plus insets).
pub const MAX_TILES: usize = 64;

fn tile(x: f32, y: f32, w: f32, h: f32, role: TileRole) -> Tile {
    Tile {
        rect: Rect::new(x, y, w, h),
        role,
    }
}

/// `cols × rows` equal cells, the first `n` in reading order.
fn grid(cols: usize, rows: usize, n: usize) -> Vec<Tile> {
    let (cw, rh) = (1.0 / cols as f32, 1.0 / rows as f32);
    (0..n.min(cols * rows))
        .map(|i| {
            tile(
                (i % cols) as f32 * cw,
                (i / cols) as f32 * rh,
                cw,
                rh,
                TileRole::Normal,
            )
        })
        .collect()
}

/// A `size × size`-cell main tile at (`col`, `row`) of a `cols × rows` grid; the other
/// cells follow in reading order.
fn big_in_grid(
    cols: usize,
    rows: usize,
    col: usize,
    row: usize,
    size: usize,
    role: TileRole,
) -> Vec<Tile> {
    let (cw, rh) = (1.0 / cols as f32, 1.0 / rows as f32);
    let mut t = vec![tile(
        col as f32 * cw,
        row as f32 * rh,
        size as f32 * cw,
        size as f32 * rh,
        role,
    )];
    for r in 0..rows {
        for c in 0..cols {
            let inside = (col..col + size).contains(&c) && (row..row + size).contains(&r);
            if !inside {
                t.push(tile(c as f32 * cw, r as f32 * rh, cw, rh, TileRole::Normal));
            }
        }
    }
    t
}

/// A main tile with a strip of `n` equal tiles along the bottom or the right.
fn main_with_strip(n: usize, bottom: bool, strip: f32, role: TileRole) -> Vec<Tile> {
    let mut t = Vec::with_capacity(n + 1);
    if bottom {
        t.push(tile(0.0, 0.0, 1.0, 1.0 - strip, role));
        let w = 1.0 / n as f32;
        t.extend((0..n).map(|i| tile(i as f32 * w, 1.0 - strip, w, strip, TileRole::Normal)));
    } else {
        t.push(tile(0.0, 0.0, 1.0 - strip, 1.0, role));
        let h = 1.0 / n as f32;
        t.extend((0..n).map(|i| tile(1.0 - strip, i as f32 * h, strip, h, TileRole::Normal)));
    }
    t
}

/// A full-canvas main tile with `n` insets along the bottom-right.
fn pip(n: usize) -> Vec<Tile> {
    let mut t = vec![tile(0.0, 0.0, 1.0, 1.0, TileRole::Main)];
    let (w, h, m) = (0.22, 0.22, 0.02);
    t.extend((0..n).map(|i| {
        tile(
            1.0 - m - w - i as f32 * (w + m),
            1.0 - m - h,
            w,
            h,
            TileRole::Normal,
        )
    }));
    t
}

/// Every built-in layout, in the order `docs/mcu.md` lists them.
pub fn builtin() -> Vec<Layout> {
    use TileRole::{Content, Main, Normal};
    let mk = |name: &str, tiles: Vec<Tile>| Layout {
        name: name.to_string(),
        tiles,
    };
    let third = 1.0 / 3.0;
    vec![
        mk("1", grid(1, 1, 1)),
        mk(
            "2",
            vec![
                tile(0.0, 0.25, 0.5, 0.5, Normal),
                tile(0.5, 0.25, 0.5, 0.5, Normal),
            ],
        ),
        mk(
            "2-stacked",
            vec![
                tile(0.25, 0.0, 0.5, 0.5, Normal),
                tile(0.25, 0.5, 0.5, 0.5, Normal),
            ],
        ),
        mk("pip", pip(1)),
        mk("pip-2", pip(2)),
        mk("pip-3", pip(3)),
        mk(
            "3",
            vec![
                tile(0.25, 0.0, 0.5, 0.5, Normal),
                tile(0.0, 0.5, 0.5, 0.5, Normal),
                tile(0.5, 0.5, 0.5, 0.5, Normal),
            ],
        ),
        mk(
            "1+2",
            vec![
                tile(0.0, 0.0, 2.0 * third, 1.0, Main),
                tile(2.0 * third, 0.0, third, 0.5, Normal),
                tile(2.0 * third, 0.5, third, 0.5, Normal),
            ],
        ),
        mk("4", grid(2, 2, 4)),
        mk("1+3", main_with_strip(3, true, 0.25, Main)),
        mk("1+4", main_with_strip(4, false, 0.25, Main)),
        mk("1+5", big_in_grid(3, 3, 0, 0, 2, Main)),
        mk("6", grid(3, 2, 6)),
        mk("1+7", big_in_grid(4, 4, 0, 0, 3, Main)),
        mk("8", grid(4, 2, 8)),
        mk("9", grid(3, 3, 9)),
        mk("10", grid(5, 2, 10)),
        mk("12", grid(4, 3, 12)),
        mk("1+12", big_in_grid(4, 4, 0, 0, 2, Main)),
        mk("13", big_in_grid(4, 4, 1, 1, 2, Main)),
        mk("16", grid(4, 4, 16)),
        mk("1+16", big_in_grid(5, 5, 1, 1, 3, Main)),
        mk("20", grid(5, 4, 20)),
        mk("25", grid(5, 5, 25)),
        mk("36", grid(6, 6, 36)),
        mk("speaker-strip-bottom", main_with_strip(5, true, 0.2, Main)),
        mk("speaker-strip-top", {
            let mut t = vec![tile(0.0, 0.2, 1.0, 0.8, Main)];
            t.extend((0..5).map(|i| tile(i as f32 * 0.2, 0.0, 0.2, 0.2, Normal)));
            t
        }),
        mk("speaker-strip-right", main_with_strip(5, false, 0.2, Main)),
        mk("speaker-center-ring", big_in_grid(4, 3, 1, 0, 2, Main)),
        mk("presentation", vec![tile(0.0, 0.0, 1.0, 1.0, Content)]),
        mk(
            "presentation+strip-bottom",
            main_with_strip(5, true, 0.2, Content),
        ),
        mk(
            "presentation+strip-right",
            main_with_strip(4, false, 0.25, Content),
        ),
        mk(
            "presentation+speaker",
            vec![
                tile(0.0, 0.0, 0.75, 1.0, Content),
                tile(0.75, 0.375, 0.25, 0.25, Main),
            ],
        ),
        mk("presentation+pip", {
            let mut t = pip(1);
            t[0].role = Content;
            t[1].role = Main;
            t
        }),
    ]
}

/// Built-in layouts plus layouts from configuration, looked up by name.
#[derive(Debug, Clone)]
pub struct LayoutSet {
    layouts: Vec<Layout>,
}

impl Default for LayoutSet {
    fn default() -> Self {
        Self { layouts: builtin() }
    }
}

impl LayoutSet {
    /// Adds layouts from a JSON array of `{"name", "tiles":[{"rect":{x,y,w,h},"role"}]}`;
    /// a configured layout with a built-in's name replaces it.
    pub fn add_from_json(&mut self, json: &str) -> Result<usize, Error> {
        let extra: Vec<Layout> = serde_json::from_str(json)
            .map_err(|e| Error::BadLayout(format!("layout config: {e}")))?;
        for l in &extra {
            l.validate()?;
        }
        let n = extra.len();
        for l in extra {
            self.layouts.retain(|o| o.name != l.name);
            self.layouts.push(l);
        }
        Ok(n)
    }

    /// The layout called `name`.
    pub fn get(&self, name: &str) -> Result<&Layout, Error> {
        self.layouts
            .iter()
            .find(|l| l.name == name)
            .ok_or_else(|| Error::UnknownLayout(name.to_string()))
    }

    /// All layouts.
    pub fn all(&self) -> &[Layout] {
        &self.layouts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_least_thirty_valid_uniquely_named_layouts() {
        let all = builtin();
        assert!(all.len() >= 30, "{} layouts", all.len());
        let mut names: Vec<_> = all.iter().map(|l| l.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len(), "duplicate names");
        for l in &all {
            l.validate().expect("valid");
        }
        let count = |n: &str| LayoutSet::default().get(n).expect(n).tiles.len();
        for (name, n) in [
            ("1", 1),
            ("2", 2),
            ("4", 4),
            ("1+5", 6),
            ("1+7", 8),
            ("9", 9),
            ("1+12", 13),
        ] {
            assert_eq!(count(name), n, "{name}");
        }
        for (name, n) in [("13", 13), ("16", 16), ("20", 20), ("25", 25), ("36", 36)] {
            assert_eq!(count(name), n, "{name}");
        }
    }

    #[test]
    fn grid_tiles_do_not_overlap_and_cover_the_canvas() {
        for l in builtin()
            .iter()
            .filter(|l| !l.name.starts_with("pip") && !l.name.ends_with("+pip"))
        {
            let px: Vec<_> = l
                .tiles
                .iter()
                .map(|t| t.rect.to_pixels(1920, 1080))
                .collect();
            for (i, a) in px.iter().enumerate() {
                for b in &px[i + 1..] {
                    let overlap =
                        a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
                    assert!(!overlap, "{}: {a:?} overlaps {b:?}", l.name);
                }
            }
            let area: usize = px.iter().map(|r| r.w * r.h).sum();
            assert!(
                area <= 1920 * 1080 && area > 1920 * 1080 / 3,
                "{}: area {area}",
                l.name
            );
        }
    }

    #[test]
    fn unknown_names_and_bad_config_are_errors() {
        let mut set = LayoutSet::default();
        assert!(matches!(set.get("nope"), Err(Error::UnknownLayout(n)) if n == "nope"));
        let cfg = r#"[{"name":"duo-wide","tiles":[{"rect":{"x":0,"y":0,"w":0.7,"h":1},"role":"main"},
                     {"rect":{"x":0.7,"y":0,"w":0.3,"h":1}}]}]"#;
        assert_eq!(set.add_from_json(cfg).expect("ok"), 1);
        let l = set.get("duo-wide").expect("configured");
        assert_eq!(l.tiles[0].role, TileRole::Main);
        assert_eq!(l.tiles[1].role, TileRole::Normal);
        assert!(
            set.add_from_json(r#"[{"name":"x","tiles":[{"rect":{"x":0.5,"y":0,"w":0.9,"h":1}}]}]"#)
                .is_err()
        );
        assert!(set.add_from_json(r#"[{"name":"x","tiles":[]}]"#).is_err());
        assert!(set.add_from_json("{not json").is_err());
    }
}
