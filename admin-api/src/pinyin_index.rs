//! Pinyin initials for searching Chinese names by typing their first letters
//! ("张三丰" → "zsf"). Latin letters and digits are kept, lower-cased; other
//! scripts (Mongolian, …) are skipped, so those names are found by name only.

use pinyin::ToPinyin;

pub(crate) fn initials(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if let Some(p) = c.to_pinyin() {
            out.push_str(p.first_letter());
        } else if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn chinese_and_latin() {
        assert_eq!(super::initials("张三丰"), "zsf");
        assert_eq!(super::initials("李 Lei"), "llei");
        assert_eq!(super::initials("ᠮᠣᠩᠭᠣᠯ"), "");
    }
}
