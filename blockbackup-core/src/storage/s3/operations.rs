//! The S3 requests the driver makes, each retried as a whole by
//! [`Client::retried`]: objects (PUT, GET, HEAD, DELETE, DeleteObjects),
//! listings (ListObjectsV2), and multipart uploads (create, parts,
//! complete, list, abort).

use std::io::{self, Read};

use rusty_s3::actions::{ListObjectsV2, ObjectIdentifier};
use rusty_s3::S3Action;

use super::client::{Client, Failure, Listed, Verb, ERROR_BODY_LIMIT, LISTING_LIMIT, SIGNED_FOR};
use super::error::S3Failure;
use super::xml;

impl Client {
    pub fn put(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        self.retried(|| {
            let url = self
                .bucket
                .put_object(Some(&self.credentials), key)
                .sign(SIGNED_FOR);
            self.send(Verb::Put, "PUT", key, &url, &[], Some(bytes))
                .map(drop)
        })
    }

    /// The object's bytes as they arrive; NotFound when it is absent.
    pub fn get(&self, key: &str) -> io::Result<Box<dyn Read + Send>> {
        let response = self.retried(|| {
            let url = self
                .bucket
                .get_object(Some(&self.credentials), key)
                .sign(SIGNED_FOR);
            self.send(Verb::Get, "GET", key, &url, &[], None)
        })?;
        Ok(Box::new(response.into_body().into_reader()))
    }

    /// The object's size, None when it is absent.
    pub fn head(&self, key: &str) -> io::Result<Option<u64>> {
        let answer = self.retried(|| {
            let url = self
                .bucket
                .head_object(Some(&self.credentials), key)
                .sign(SIGNED_FOR);
            match self.send(Verb::Head, "HEAD", key, &url, &[], None) {
                Ok(response) => Ok(Some(response)),
                Err(Failure::Fatal(error)) if error.failure == S3Failure::NoSuchKey => Ok(None),
                Err(failure) => Err(failure),
            }
        })?;
        let Some(response) = answer else {
            return Ok(None);
        };
        let size = response
            .headers()
            .get("content-length")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok());
        match size {
            Some(size) => Ok(Some(size)),
            None => Err(self
                .error(
                    S3Failure::BadAnswer,
                    "HEAD",
                    key,
                    "no Content-Length in the answer",
                )
                .into_io()),
        }
    }

    pub fn delete(&self, key: &str) -> io::Result<()> {
        self.retried(|| {
            let url = self
                .bucket
                .delete_object(Some(&self.credentials), key)
                .sign(SIGNED_FOR);
            match self.send(Verb::Delete, "DELETE", key, &url, &[], None) {
                Err(Failure::Fatal(error)) if error.failure == S3Failure::NoSuchKey => Ok(()),
                other => other.map(drop),
            }
        })
    }

    /// Deletes `keys`, a thousand per request.
    pub fn delete_many(&self, keys: &[String]) -> io::Result<()> {
        for batch in keys.chunks(1000) {
            let objects: Vec<ObjectIdentifier> = batch
                .iter()
                .map(|key| ObjectIdentifier::new(key.clone()))
                .collect();
            let first = batch.first().map_or("", String::as_str);
            self.retried(|| {
                let mut action = self
                    .bucket
                    .delete_objects(Some(&self.credentials), objects.iter());
                action.set_quiet(true);
                let url = action.sign(SIGNED_FOR);
                let (body, md5) = action.body_with_md5();
                let mut response = self.send(
                    Verb::Post,
                    "DeleteObjects",
                    first,
                    &url,
                    &[("content-md5", &md5)],
                    Some(body.as_bytes()),
                )?;
                let answer =
                    self.read_body("DeleteObjects", first, &mut response, LISTING_LIMIT)?;
                // Quiet: only the objects that could not be deleted are named.
                let errors = xml::all_text(&answer, "Error");
                match errors.first() {
                    None => Ok(()),
                    Some(error) => {
                        let key = xml::text(&format!("<x>{error}</x>"), "Key").unwrap_or_default();
                        let detail = format!(
                            "{} of {} objects not deleted, the first with {}",
                            errors.len(),
                            batch.len(),
                            xml::error_code(error).unwrap_or_else(|| "an error".into())
                        );
                        Err(Failure::Fatal(self.error(
                            S3Failure::Refused,
                            "DeleteObjects",
                            &key,
                            &detail,
                        )))
                    }
                }
            })?;
        }
        Ok(())
    }

    /// Every object under `prefix` (and, with `delimiter`, the common
    /// prefixes directly under it), all pages.
    pub fn list(
        &self,
        prefix: &str,
        delimiter: bool,
        max_keys: Option<usize>,
    ) -> io::Result<(Vec<Listed>, Vec<String>)> {
        let (mut objects, mut prefixes) = (Vec::new(), Vec::new());
        let mut token: Option<String> = None;
        loop {
            let page = self.retried(|| {
                let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
                action.with_prefix(prefix);
                if delimiter {
                    action.with_delimiter("/");
                }
                if let Some(max_keys) = max_keys {
                    action.with_max_keys(max_keys);
                }
                if let Some(token) = &token {
                    action.with_continuation_token(token.as_str());
                }
                let url = action.sign(SIGNED_FOR);
                let mut response = self.send(Verb::Get, "LIST", prefix, &url, &[], None)?;
                let text = self.read_body("LIST", prefix, &mut response, LISTING_LIMIT)?;
                ListObjectsV2::parse_response(&text).map_err(|error| {
                    self.bad_answer(
                        "LIST",
                        prefix,
                        &format!("the listing could not be parsed: {error}"),
                    )
                })
            })?;
            for content in page.contents {
                let modified_us = content
                    .last_modified
                    .as_deref()
                    .and_then(|text| text.parse::<jiff::Timestamp>().ok())
                    .map(|time| time.as_microsecond());
                objects.push(Listed {
                    key: content.key,
                    size: content.size.unwrap_or(0),
                    modified_us,
                });
            }
            prefixes.extend(page.common_prefixes.into_iter().map(|p| p.prefix));
            match page.next_continuation_token {
                Some(next) if max_keys.is_none() && Some(&next) != token.as_ref() => {
                    token = Some(next)
                }
                _ => return Ok((objects, prefixes)),
            }
        }
    }

    pub fn create_multipart(&self, key: &str) -> io::Result<String> {
        self.retried(|| {
            let url = self
                .bucket
                .create_multipart_upload(Some(&self.credentials), key)
                .sign(SIGNED_FOR);
            let mut response = self.send(
                Verb::Post,
                "CreateMultipartUpload",
                key,
                &url,
                &[],
                Some(&[]),
            )?;
            let text = self.read_body(
                "CreateMultipartUpload",
                key,
                &mut response,
                ERROR_BODY_LIMIT,
            )?;
            xml::text(&text, "UploadId")
                .filter(|id| !id.is_empty())
                .ok_or_else(|| {
                    self.bad_answer("CreateMultipartUpload", key, "no UploadId in the answer")
                })
        })
    }

    /// Uploads part `number` (from 1); its ETag.
    pub fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u16,
        bytes: &[u8],
    ) -> io::Result<String> {
        self.retried(|| {
            let url = self
                .bucket
                .upload_part(Some(&self.credentials), key, number, upload_id)
                .sign(SIGNED_FOR);
            let response = self.send(Verb::Put, "UploadPart", key, &url, &[], Some(bytes))?;
            response
                .headers()
                .get("etag")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
                .ok_or_else(|| self.bad_answer("UploadPart", key, "no ETag in the answer"))
        })
    }

    pub fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        etags: &[String],
    ) -> io::Result<()> {
        self.retried(|| {
            let action = self.bucket.complete_multipart_upload(
                Some(&self.credentials),
                key,
                upload_id,
                etags.iter().map(String::as_str),
            );
            let url = action.sign(SIGNED_FOR);
            let body = action.body();
            let mut response = self.send(
                Verb::Post,
                "CompleteMultipartUpload",
                key,
                &url,
                &[],
                Some(body.as_bytes()),
            )?;
            let text = self.read_body(
                "CompleteMultipartUpload",
                key,
                &mut response,
                ERROR_BODY_LIMIT,
            )?;
            // A 200 answer can still carry an error, found late.
            match xml::error_code(&text) {
                None if text.contains("<Error>") => {
                    Err(self.bad_answer("CompleteMultipartUpload", key, "an error without a code"))
                }
                None => Ok(()),
                Some(code) => {
                    let error = self.error(
                        S3Failure::Refused,
                        "CompleteMultipartUpload",
                        key,
                        &format!("the store answered {code}"),
                    );
                    if matches!(code.as_str(), "InternalError" | "SlowDown") {
                        Err(Failure::Retry(error))
                    } else {
                        Err(Failure::Fatal(error))
                    }
                }
            }
        })
    }

    /// The multipart uploads under way under `prefix`, (key, upload id),
    /// at most a thousand. rusty-s3 has no action for ListMultipartUploads:
    /// it is the bucket-level GET of ListObjectsV2 with another query.
    pub fn list_uploads(&self, prefix: &str) -> io::Result<(Vec<(String, String)>, bool)> {
        self.retried(|| {
            let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
            let query = action.query_mut();
            query.remove("list-type");
            query.remove("encoding-type");
            query.insert("uploads", "");
            query.insert("prefix", prefix);
            let url = action.sign(SIGNED_FOR);
            let mut response =
                match self.send(Verb::Get, "ListMultipartUploads", prefix, &url, &[], None) {
                    Ok(response) => response,
                    // What rclone answers when there is none.
                    Err(Failure::Fatal(error)) if error.failure == S3Failure::NoSuchKey => {
                        return Ok((Vec::new(), false))
                    }
                    Err(failure) => return Err(failure),
                };
            let text =
                self.read_body("ListMultipartUploads", prefix, &mut response, LISTING_LIMIT)?;
            let uploads = xml::all_text(&text, "Upload")
                .into_iter()
                .filter_map(|upload| {
                    let upload = format!("<Upload>{upload}</Upload>");
                    Some((xml::text(&upload, "Key")?, xml::text(&upload, "UploadId")?))
                })
                .collect();
            let truncated = xml::text(&text, "IsTruncated").as_deref() == Some("true");
            Ok((uploads, truncated))
        })
    }

    pub fn abort_multipart(&self, key: &str, upload_id: &str) -> io::Result<()> {
        self.retried(|| {
            let url = self
                .bucket
                .abort_multipart_upload(Some(&self.credentials), key, upload_id)
                .sign(SIGNED_FOR);
            match self.send(Verb::Delete, "AbortMultipartUpload", key, &url, &[], None) {
                // Already gone: what aborting wants.
                Err(Failure::Fatal(error)) if error.failure == S3Failure::NoSuchKey => Ok(()),
                other => other.map(drop),
            }
        })
    }
}
