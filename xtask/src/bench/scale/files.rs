//! The files source: the cluster written as YAML manifests in a directory the agent watches
//! (`splitter run --manifests DIR`); a change is a file renamed over its old version, as an
//! editor or `kubectl` writing into a ConfigMap volume does.

use std::path::PathBuf;

use serde_json::Value;

use super::{Size, cluster};
use crate::topology;

pub struct Manifests {
    pub dir: PathBuf,
}

impl Manifests {
    /// Writes [`cluster::files`] into `dir`.
    pub fn write(dir: PathBuf, size: Size) -> anyhow::Result<Self> {
        for (file, objects) in cluster::files(size) {
            std::fs::write(dir.join(file), yaml(&objects)?)?;
        }
        Ok(Self { dir })
    }

    /// Replaces `file` by one holding `object`, in one rename.
    pub fn replace(&self, file: &str, object: &Value) -> anyhow::Result<()> {
        topology::write_atomically(&self.dir.join(file), &yaml(std::slice::from_ref(object))?)
    }

    /// `(files, bytes)` of the directory.
    pub fn footprint(&self) -> std::io::Result<(usize, u64)> {
        let (mut files, mut bytes) = (0, 0);
        for e in std::fs::read_dir(&self.dir)? {
            files += 1;
            bytes += e?.metadata()?.len();
        }
        Ok((files, bytes))
    }
}

/// The file the `n`th churned object is written to: one of 50 small files, so that each write
/// is one object (as a watch event is) and the directory does not grow.
pub fn churn_file(n: u64) -> String {
    format!("churn-{:02}.yaml", n % 50)
}

/// `objects` as a multi-document YAML stream.
fn yaml(objects: &[Value]) -> anyhow::Result<String> {
    Ok(serde_saphyr::to_string_multiple(objects)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifests_parse_back_to_the_cluster() {
        let dir = tempfile::tempdir().expect("tempdir");
        let size = "2/2/4".parse::<Size>().expect("size");
        Manifests::write(dir.path().to_path_buf(), size).expect("write");
        for (file, objects) in cluster::files(size) {
            let text = std::fs::read_to_string(dir.path().join(&file)).expect("read");
            let back: Vec<Value> = serde_saphyr::from_multiple(&text).expect("parse");
            assert_eq!(back, objects, "{file}");
        }
    }

    #[test]
    fn a_replaced_file_holds_only_the_new_object() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = Manifests {
            dir: dir.path().to_path_buf(),
        };
        m.replace(cluster::PROBE_SLICE, &cluster::probe_slice(1))
            .expect("replace");
        let text = std::fs::read_to_string(m.dir.join(cluster::PROBE_SLICE)).expect("read");
        let back: Vec<Value> = serde_saphyr::from_multiple(&text).expect("parse");
        assert_eq!(back, [cluster::probe_slice(1)]);
    }
}
