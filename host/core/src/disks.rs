//! A domain definition with its disks moved (a storage move): every `file='OLD'` (or
//! `file="OLD"`) attribute of the XML names the new path instead. Text, not a re-serialised
//! tree, so the rest of the definition stays byte for byte as it was.

/// `xml` with each disk path of `moved` (old → new) replaced; an error names a path the XML
/// does not hold.
pub fn with_disks_moved(xml: &str, moved: &[(String, String)]) -> Result<String, String> {
    let mut xml = xml.to_string();
    for (old, new) in moved {
        let mut found = false;
        for quote in ['\'', '"'] {
            let from = format!("file={quote}{old}{quote}");
            if xml.contains(&from) {
                found = true;
                xml = xml.replace(&from, &format!("file={quote}{new}{quote}"));
            }
        }
        if !found {
            return Err(format!("the definition names no disk {old}"));
        }
    }
    Ok(xml)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_paths_are_replaced_and_a_missing_one_is_an_error() {
        let xml = "<domain><devices><disk type='file'><source file='/a/x.qcow2'/></disk>\
                   <disk type=\"file\"><source file=\"/a/y.img\"/></disk></devices></domain>";
        let moved = vec![("/a/x.qcow2".to_string(), "/b/x.qcow2".to_string()), ("/a/y.img".into(), "/b/y.img".into())];
        let out = with_disks_moved(xml, &moved).expect("both found");
        assert!(
            out.contains("file='/b/x.qcow2'") && out.contains("file=\"/b/y.img\"") && !out.contains("/a/"),
            "{out}"
        );
        // A prefix of another path is not matched: the quotes are part of the match.
        let e = with_disks_moved(xml, &[("/a/x".to_string(), "/b/x".to_string())]).expect_err("no such disk");
        assert_eq!(e, "the definition names no disk /a/x");
    }
}
