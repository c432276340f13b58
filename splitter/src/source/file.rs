//! `--manifests PATH`: files, or directories of files, of multi-document YAML.
//!
//! Each file keeps the objects it last yielded. A document that fails keeps the last good
//! version of its object (when the document still says which object it is); a file that fails
//! to parse as YAML keeps everything it had. Everything else applies.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde_json::Value;
use thiserror::Error;

use splitter_plan::model::{
    Index, Kind, ModelError, Object, ObjectKey,
    index::Update,
    parse::{self, Parsed},
};

#[derive(Debug, Error)]
pub enum SourceError {
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: not valid YAML: {message} (keeping the objects it had)", path.display())]
    Yaml { path: PathBuf, message: String },
    #[error("{}: document {document}: {error}", path.display())]
    Object {
        path: PathBuf,
        /// 1-based position of the document in the file.
        document: usize,
        error: ModelError,
    },
    #[error("{}: document {document}: {key} is also defined in {}; this one is ignored", path.display(), first.display())]
    Duplicate {
        path: PathBuf,
        document: usize,
        key: ObjectKey,
        first: PathBuf,
    },
}

/// A kind we have no use for, skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub document: usize,
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Whether any file changed (appeared, disappeared or was rewritten) since the last scan.
    pub changed: bool,
    /// Errors of every file as of this scan (a file that did not change keeps reporting its
    /// errors, so a caller printing the latest report sees the whole picture).
    pub errors: Vec<SourceError>,
    pub skipped: Vec<Skipped>,
    /// Files read in this scan.
    pub files: usize,
}

#[derive(Debug, Default)]
struct FileState {
    stamp: Option<(SystemTime, u64)>,
    /// The objects of the file in document order, each with its document number.
    objects: Vec<(usize, Object)>,
    errors: Vec<SourceError>,
    skipped: Vec<Skipped>,
    /// The documents that define an object an earlier document of the same file defines too.
    repeats: Vec<(usize, ObjectKey)>,
}

/// The object of document `doc` (objects are in document order, one per document at most).
fn at(objects: &[(usize, Object)], doc: usize) -> Option<&Object> {
    let i = objects.binary_search_by_key(&doc, |(d, _)| *d).ok()?;
    Some(&objects[i].1)
}

/// The manifests under a set of paths, re-read when they change.
#[derive(Debug)]
pub struct FileSource {
    roots: Vec<PathBuf>,
    files: BTreeMap<PathBuf, FileState>,
    /// The files defining each object, in path order, each with the first document defining it
    /// there: that document of the first file is served. A sorted `Vec`: almost every object has
    /// one file, and a one-entry tree costs a whole node per object.
    owners: BTreeMap<ObjectKey, Vec<(PathBuf, usize)>>,
    /// The objects more than one file defines, kept with `owners` for the keys a scan touches:
    /// a report lists duplicates from these rather than by going through every object again
    /// (at tens of thousands of objects, that walk was most of a scan).
    shadowed: BTreeSet<ObjectKey>,
    /// What the scans since the last [`take_changes`](Self::take_changes) changed.
    changes: Vec<Update>,
}

impl FileSource {
    pub fn new(roots: impl IntoIterator<Item = PathBuf>) -> Self {
        Self {
            roots: roots.into_iter().collect(),
            files: BTreeMap::new(),
            owners: BTreeMap::new(),
            shadowed: BTreeSet::new(),
            changes: Vec::new(),
        }
    }

    /// The objects that changed since the last call, as applies and deletes: an edit of one
    /// file sends its objects that changed, not the whole source (at thousands of objects,
    /// resending everything made every edit cost a full comparison downstream).
    pub fn take_changes(&mut self) -> Vec<Update> {
        std::mem::take(&mut self.changes)
    }

    /// The version of `key` served: the one of the first file in path order that defines it.
    fn served(&self, key: &ObjectKey) -> Option<&Object> {
        let (path, doc) = self.origin(key)?;
        at(&self.files.get(path)?.objects, doc)
    }

    /// Where the version of `key` served comes from: its file and 1-based document number.
    pub fn origin(&self, key: &ObjectKey) -> Option<(&Path, usize)> {
        let (path, doc) = self.owners.get(key)?.first()?;
        Some((path, *doc))
    }

    /// The paths given at start (files or directories).
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Reads every file whose size or modification time changed (all of them the first time).
    pub fn scan(&mut self) -> LoadReport {
        let mut report = LoadReport::default();
        let mut present = BTreeSet::new();
        let mut root_errors = Vec::new();
        for root in &self.roots {
            match list(root) {
                Ok(files) => present.extend(files),
                Err(e) => root_errors.push(SourceError::Read {
                    path: root.clone(),
                    source: e,
                }),
            }
        }
        // The old objects of every file that is gone or re-read, for the diff below.
        let mut old: BTreeMap<PathBuf, Vec<(usize, Object)>> = BTreeMap::new();
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(*p))
            .cloned()
            .collect();
        report.changed |= !gone.is_empty();
        for path in &gone {
            if let Some(state) = self.files.get_mut(path) {
                old.insert(path.clone(), std::mem::take(&mut state.objects));
            }
        }
        let mut reread = Vec::new();
        for path in present {
            let stamp = std::fs::metadata(&path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            if stamp.is_some() && self.files.get(&path).is_some_and(|s| s.stamp == stamp) {
                continue;
            }
            let state = self.files.entry(path.clone()).or_default();
            report.changed = true;
            report.files += 1;
            state.stamp = stamp;
            let before = std::mem::take(&mut state.objects);
            reload(&path, state, &before);
            old.insert(path.clone(), before);
            reread.push(path);
        }
        self.diff(&old, &reread);
        for path in &gone {
            self.files.remove(path);
        }
        report.errors = root_errors;
        // Every copy of an object but the one served is a duplicate: the copies in later files
        // of the shadowed objects, and the repeats within a file. Listed by file, then document.
        let mut duplicates: BTreeMap<&Path, Vec<(usize, &ObjectKey)>> = BTreeMap::new();
        for key in &self.shadowed {
            for (path, doc) in self.owners.get(key).into_iter().flatten().skip(1) {
                duplicates.entry(path).or_default().push((*doc, key));
            }
        }
        for (path, state) in &self.files {
            let mut dups = duplicates.remove(path.as_path()).unwrap_or_default();
            dups.extend(state.repeats.iter().map(|(doc, key)| (*doc, key)));
            dups.sort_unstable_by_key(|(doc, _)| *doc);
            for (doc, key) in dups {
                if let Some((first, _)) = self.origin(key) {
                    report.errors.push(SourceError::Duplicate {
                        path: path.clone(),
                        document: doc,
                        key: key.clone(),
                        first: first.to_path_buf(),
                    });
                }
            }
            report.errors.extend(state.errors.iter().map(clone_error));
            report.skipped.extend(state.skipped.iter().cloned());
        }
        report
    }

    /// Records what re-reading `reread` and dropping the files that are gone (the objects of
    /// both, before, are in `old`) changed of what is served, and updates the owners, the
    /// shadowed objects and the repeats of the files re-read.
    fn diff(&mut self, old: &BTreeMap<PathBuf, Vec<(usize, Object)>>, reread: &[PathBuf]) {
        let mut touched: BTreeSet<ObjectKey> = old
            .values()
            .flat_map(|objects| objects.iter().map(|(_, o)| o.key()))
            .collect();
        for path in reread {
            if let Some(state) = self.files.get(path) {
                touched.extend(state.objects.iter().map(|(_, o)| o.key()));
            }
        }
        // What was served before: owners are still as they were.
        let before: Vec<Option<Object>> = touched
            .iter()
            .map(|key| {
                let (path, doc) = self.origin(key)?;
                match old.get(path) {
                    Some(objects) => at(objects, doc),
                    None => at(&self.files.get(path)?.objects, doc),
                }
                .cloned()
            })
            .collect();
        for (path, objects) in old {
            for (_, o) in objects {
                let key = o.key();
                if let Some(paths) = self.owners.get_mut(&key) {
                    paths.retain(|(p, _)| p != path);
                    if paths.is_empty() {
                        self.owners.remove(&key);
                    }
                }
            }
        }
        for path in reread {
            let Some(state) = self.files.get_mut(path) else {
                continue;
            };
            state.repeats.clear();
            for (doc, o) in &state.objects {
                let paths = self.owners.entry(o.key()).or_default();
                match paths.binary_search_by(|(p, _)| p.cmp(path)) {
                    Ok(_) => state.repeats.push((*doc, o.key())),
                    Err(i) => paths.insert(i, (path.clone(), *doc)),
                }
            }
        }
        // Only the touched objects can have gained or lost a copy in another file.
        for key in &touched {
            if self.owners.get(key).is_some_and(|paths| paths.len() > 1) {
                self.shadowed.insert(key.clone());
            } else {
                self.shadowed.remove(key);
            }
        }
        for (key, before) in touched.into_iter().zip(before) {
            match (before, self.served(&key)) {
                (Some(b), Some(n)) if b == *n => {}
                (_, Some(n)) => self.changes.push(Update::Apply(Box::new(n.clone()))),
                (Some(_), None) => self.changes.push(Update::Delete(key)),
                (None, None) => {}
            }
        }
    }

    /// Every object, once (the first file in path order wins a duplicate).
    pub fn objects(&self) -> Vec<Object> {
        let mut seen = BTreeSet::new();
        self.files
            .values()
            .flat_map(|s| s.objects.iter().map(|(_, o)| o))
            .filter(|o| seen.insert(o.key()))
            .cloned()
            .collect()
    }

    /// The source's content as one relist per kind.
    pub fn updates(&self) -> Vec<Update> {
        let mut by_kind: BTreeMap<Kind, Vec<Object>> =
            Kind::ALL.iter().map(|k| (*k, Vec::new())).collect();
        for o in self.objects() {
            by_kind.entry(o.kind()).or_default().push(o);
        }
        by_kind
            .into_iter()
            .map(|(k, v)| Update::Reset(k, v))
            .collect()
    }

    pub fn index(&self) -> Index {
        Index::from_objects(self.objects())
    }
}

/// Reads `paths` once: the index, and the report of what went wrong or was skipped.
pub fn load(paths: &[PathBuf]) -> (Index, LoadReport) {
    let mut source = FileSource::new(paths.iter().cloned());
    let report = source.scan();
    (source.index(), report)
}

/// Reads `path` into `state`; `before` holds the file's objects as of the last read, whose
/// versions a broken document keeps.
fn reload(path: &Path, state: &mut FileState, before: &[(usize, Object)]) {
    state.errors.clear();
    state.skipped.clear();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            state.errors.push(SourceError::Read {
                path: path.to_path_buf(),
                source: e,
            });
            // Unreadable: the file keeps everything it had.
            state.objects = before.to_vec();
            return;
        }
    };
    let docs: Vec<Value> = match parse::documents(&text) {
        Ok(d) => d,
        Err(e) => {
            state.errors.push(SourceError::Yaml {
                path: path.to_path_buf(),
                message: e.to_string(),
            });
            state.objects = before.to_vec();
            return;
        }
    };
    let previous: BTreeMap<ObjectKey, &Object> = before.iter().map(|(_, o)| (o.key(), o)).collect();
    for (i, doc) in docs.into_iter().enumerate() {
        let document = i + 1;
        if doc.is_null() {
            continue;
        }
        let claimed = claimed_key(&doc);
        match parse::parse(doc) {
            // Kept compacted: parsing leaves Strings and Vecs with spare capacity, which the
            // source and the index (they share the object) would hold for as long as the file
            // does not change (at 20,000 objects, 10 of the 35 MB the source held).
            Ok(Parsed::Object(o)) => state.objects.push((document, o.compacted())),
            Ok(Parsed::Skipped { api_version, kind }) => {
                tracing::info!(file = %path.display(), document, %kind, "skipping a kind the agent does not use");
                state.skipped.push(Skipped {
                    path: path.to_path_buf(),
                    document,
                    api_version,
                    kind,
                    name: String::new(),
                });
            }
            Err(error) => {
                if let Some(old) = claimed.and_then(|k| previous.get(&k)) {
                    state.objects.push((document, (*old).clone()));
                }
                state.errors.push(SourceError::Object {
                    path: path.to_path_buf(),
                    document,
                    error,
                });
            }
        }
    }
}

/// The key a document claims, read without validating it, so a broken document can keep the
/// last good version of its object.
fn claimed_key(doc: &Value) -> Option<ObjectKey> {
    let api_version = doc.get("apiVersion")?.as_str()?;
    let (kind_str, ns, name) = parse::identity(doc);
    let kind = parse::kind_of(api_version, &kind_str).ok()??;
    let ns = if !kind.is_namespaced() {
        String::new()
    } else if ns.is_empty() {
        "default".to_string()
    } else {
        ns
    };
    Some(ObjectKey::new(kind, ns, name))
}

/// The manifest files under `root`, sorted. Hidden entries are skipped: a ConfigMap volume
/// keeps its real files in `..data` and exposes them through symlinks.
fn list(root: &Path) -> io::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(root)?;
    if !meta.is_dir() {
        return Ok(vec![root.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn clone_error(e: &SourceError) -> SourceError {
    match e {
        SourceError::Read { path, source } => SourceError::Read {
            path: path.clone(),
            source: io::Error::new(source.kind(), source.to_string()),
        },
        SourceError::Yaml { path, message } => SourceError::Yaml {
            path: path.clone(),
            message: message.clone(),
        },
        SourceError::Object {
            path,
            document,
            error,
        } => SourceError::Object {
            path: path.clone(),
            document: *document,
            error: error.clone(),
        },
        SourceError::Duplicate {
            path,
            document,
            key,
            first,
        } => SourceError::Duplicate {
            path: path.clone(),
            document: *document,
            key: key.clone(),
            first: first.clone(),
        },
    }
}
