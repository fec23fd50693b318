//! Writes a PNG of every built-in layout into a directory and prints the markdown table
//! for `docs/mcu.md`: `cargo run -p mcu --example layout_pictures -- docs/mcu`.

use mcu::layout::LayoutSet;
use mcu::picture::{file_name, layout_png};
use mcu::text::{DEFAULT_FONT, TextRenderer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "docs/mcu".into());
    std::fs::create_dir_all(&dir)?;
    let mut font = TextRenderer::from_file(DEFAULT_FONT)?;
    let set = LayoutSet::default();
    println!("| name | tiles | picture |\n|---|---|---|");
    for l in set.all() {
        let png = layout_png(l, 192, 108, Some(&mut font))?;
        let file = file_name(l);
        std::fs::write(format!("{dir}/{file}"), png)?;
        println!(
            "| `{}` | {} | ![{}](mcu/{file}) |",
            l.name,
            l.tiles.len(),
            l.name
        );
    }
    Ok(())
}
