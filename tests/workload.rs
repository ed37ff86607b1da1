//! A seeded random workload of object and annotation writes, deletes and copies.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test support: a failed set-up is a failed test

use std::collections::BTreeMap;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};

use crate::env::{PLAIN, VERSIONED};

/// Keys that exercise the decoding rules.
pub const KEYS: [&str; 6] = [
    "plain.txt",
    "dir/with space.txt",
    "a+b=c.txt",
    "ünïcødé/文件.txt",
    "x%2Fy.txt",
    "deep/a/b/c.json",
];

/// A seeded random workload over both buckets: annotation put/overwrite/delete, object
/// overwrite/delete/copy, and deletes of specific versions.
pub struct Workload {
    rng: fastrand::Rng,
    objects: usize,
    /// Existing keys per bucket.
    live: BTreeMap<(&'static str, String), ()>,
}

impl Workload {
    pub fn new(seed: u64, objects: usize) -> Self {
        Workload {
            rng: fastrand::Rng::with_seed(seed),
            objects,
            live: BTreeMap::new(),
        }
    }

    fn key(&mut self) -> String {
        let i = self.rng.usize(0..self.objects);
        format!("{i:03}/{}", KEYS[i % KEYS.len()])
    }

    /// Runs `ops` operations; returns how many S3 writes were made.
    pub async fn run(&mut self, s3: &aws_sdk_s3::Client, ops: usize) -> usize {
        let mut done = 0;
        while done < ops {
            let bucket: &'static str = if self.rng.bool() { VERSIONED } else { PLAIN };
            let key = self.key();
            let exists = self.live.contains_key(&(bucket, key.clone()));
            if !exists {
                put_object(s3, bucket, &key, &format!("body-{}", self.rng.u32(..))).await;
                self.live.insert((bucket, key), ());
                done += 1;
                continue;
            }
            let names = ["color", "owner", "größe", "review.status", "label_2"];
            match self.rng.u32(0..100) {
                0..=54 => {
                    let name = names[self.rng.usize(0..names.len())];
                    let value = format!("{{\"v\":{},\"by\":\"t\"}}", self.rng.u32(0..5));
                    let r = s3
                        .put_object_annotation()
                        .bucket(bucket)
                        .key(&key)
                        .annotation_name(name)
                        .annotation_payload(ByteStream::from(value.into_bytes()))
                        .send()
                        .await;
                    r.unwrap_or_else(|e| panic!("PutObjectAnnotation {bucket}/{key}: {e:?}"));
                }
                55..=69 => {
                    let name = names[self.rng.usize(0..names.len())];
                    let _ = s3
                        .delete_object_annotation()
                        .bucket(bucket)
                        .key(&key)
                        .annotation_name(name)
                        .send()
                        .await;
                }
                70..=79 => {
                    put_object(s3, bucket, &key, &format!("body-{}", self.rng.u32(..))).await;
                }
                80..=87 => {
                    s3.delete_object()
                        .bucket(bucket)
                        .key(&key)
                        .send()
                        .await
                        .expect("DeleteObject");
                    self.live.remove(&(bucket, key));
                }
                88..=93 => {
                    let dest = self.key();
                    s3.copy_object()
                        .bucket(bucket)
                        .key(&dest)
                        .copy_source(format!("{bucket}/{}", urlencode(&key)))
                        .send()
                        .await
                        .unwrap_or_else(|e| panic!("CopyObject {bucket}/{key} -> {dest}: {e:?}"));
                    self.live.insert((bucket, dest), ());
                }
                _ => {
                    // Delete a specific (non-current) version of a versioned object, or an
                    // annotation on one.
                    if bucket == VERSIONED {
                        let versions = s3
                            .list_object_versions()
                            .bucket(bucket)
                            .prefix(&key)
                            .send()
                            .await
                            .expect("versions");
                        let old: Vec<String> = versions
                            .versions()
                            .iter()
                            .filter(|v| {
                                v.key() == Some(key.as_str()) && v.is_latest() != Some(true)
                            })
                            .filter_map(|v| v.version_id().map(str::to_string))
                            .collect();
                        if let Some(v) = old.first() {
                            if self.rng.bool() {
                                let _ = s3
                                    .delete_objects()
                                    .bucket(bucket)
                                    .delete(
                                        Delete::builder()
                                            .objects(
                                                ObjectIdentifier::builder()
                                                    .key(&key)
                                                    .version_id(v)
                                                    .build()
                                                    .expect("id"),
                                            )
                                            .build()
                                            .expect("delete"),
                                    )
                                    .send()
                                    .await;
                            } else {
                                let _ = s3
                                    .put_object_annotation()
                                    .bucket(bucket)
                                    .key(&key)
                                    .version_id(v)
                                    .annotation_name("old-version-note")
                                    .annotation_payload(ByteStream::from_static(b"kept"))
                                    .send()
                                    .await;
                            }
                        }
                    }
                }
            }
            done += 1;
        }
        done
    }
}

async fn put_object(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, body: &str) {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body.as_bytes().to_vec()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("PutObject {bucket}/{key}: {e:?}"));
}

fn urlencode(key: &str) -> String {
    let mut out = String::new();
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
