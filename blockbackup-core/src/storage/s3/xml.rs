//! The few values read out of S3's XML answers, read tolerantly: stores
//! differ in namespaces and root element names (rclone's answers carry no
//! namespace and name some roots differently), so only the elements that
//! matter are looked for, wherever they are.

/// The text of every `<tag>…</tag>` in `body`, unescaped, in order.
pub fn all_text(body: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut found = Vec::new();
    let mut rest = body;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else {
            break;
        };
        found.push(unescape(&after[..end]));
        rest = &after[end + close.len()..];
    }
    found
}

/// The text of the first `<tag>…</tag>` in `body`.
pub fn text(body: &str, tag: &str) -> Option<String> {
    all_text(body, tag).into_iter().next()
}

/// The error code of an S3 error answer (`<Error><Code>…`).
pub fn error_code(body: &str) -> Option<String> {
    text(body, "Code")
}

fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&apos;", "'")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_values_with_or_without_namespace() {
        let aws = r#"<?xml version="1.0"?><InitiateMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Bucket>b</Bucket><UploadId>abc&amp;1</UploadId></InitiateMultipartUploadResult>"#;
        let rclone = "<InitiateMultipartUpload><UploadId>xyz</UploadId></InitiateMultipartUpload>";
        assert_eq!(text(aws, "UploadId").as_deref(), Some("abc&1"));
        assert_eq!(text(rclone, "UploadId").as_deref(), Some("xyz"));
        assert_eq!(text(rclone, "Missing"), None);
    }

    #[test]
    fn reads_every_occurrence() {
        let body = "<DeleteResult><Deleted><Key>a</Key></Deleted><Error><Key>b&lt;</Key><Code>AccessDenied</Code></Error></DeleteResult>";
        assert_eq!(all_text(body, "Key"), ["a", "b<"]);
        assert_eq!(error_code(body).as_deref(), Some("AccessDenied"));
        assert_eq!(all_text("<Key>unclosed", "Key"), Vec::<String>::new());
    }
}
