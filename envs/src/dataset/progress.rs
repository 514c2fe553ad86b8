//! Per-frame progress labels stored beside a dataset, in the layout of LeRobot's SARM progress file
//! (`sarm_progress.parquet` from `policies/sarm/compute_rabc_weights.py`: `index`, `episode_index`,
//! `frame_index`, `progress_sparse`, sorted by `index`), plus a plain `progress` column and the
//! reward-aligned BC `weight` (TOPReward paper Eq. 3). Because of `progress_sparse`, LeRobot's RA-BC
//! (`--rabc_progress_path`) can read the file as it is.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::error::{DatasetError, Result, io};
use super::table::Table;

/// Rows of a progress file, one per frame.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProgressTable {
    /// Global frame index in the dataset (LeRobot's `index`).
    pub index: Vec<i64>,
    pub episode_index: Vec<i64>,
    pub frame_index: Vec<i64>,
    /// Progress in [0, 1] per frame.
    pub progress: Vec<f64>,
    /// Eq. 3 weight per frame.
    pub weight: Vec<f64>,
    /// Free-form key/value provenance (model, camera, weight parameters), stored as parquet metadata.
    pub metadata: BTreeMap<String, String>,
}

impl ProgressTable {
    pub fn len(&self) -> usize {
        self.index.len()
    }
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

/// Write `table` to `path` atomically: a temporary file in the same folder, then a rename.
pub fn write_progress(path: &Path, table: &ProgressTable) -> Result<()> {
    let n = table.len();
    for (name, len) in [
        ("episode_index", table.episode_index.len()),
        ("frame_index", table.frame_index.len()),
        ("progress", table.progress.len()),
        ("weight", table.weight.len()),
    ] {
        if len != n {
            return Err(DatasetError::Inconsistent {
                path: path.to_path_buf(),
                reason: format!("column {name} has {len} rows, index has {n}"),
            });
        }
    }
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("index", Arc::new(Int64Array::from(table.index.clone()))),
        (
            "episode_index",
            Arc::new(Int64Array::from(table.episode_index.clone())),
        ),
        (
            "frame_index",
            Arc::new(Int64Array::from(table.frame_index.clone())),
        ),
        ("progress", Arc::new(Float64Array::from(table.progress.clone()))),
        (
            "progress_sparse",
            Arc::new(Float64Array::from(table.progress.clone())),
        ),
        ("weight", Arc::new(Float64Array::from(table.weight.clone()))),
    ];
    let fields: Vec<Field> = cols
        .iter()
        .map(|(k, a)| Field::new(*k, a.data_type().clone(), false))
        .collect();
    debug_assert!(
        fields
            .iter()
            .all(|f| matches!(f.data_type(), DataType::Int64 | DataType::Float64))
    );
    let schema = Schema::new(fields).with_metadata(table.metadata.clone());
    let batch = RecordBatch::try_new(Arc::new(schema), cols.into_iter().map(|(_, a)| a).collect()).map_err(
        |source| DatasetError::Arrow {
            path: path.to_path_buf(),
            source,
        },
    )?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let tmp = plain_mode(
        tempfile::Builder::new()
            .prefix(".progress.partial-")
            .suffix(".parquet"),
        false,
    )
    .tempfile_in(&dir)
    .map_err(io(&dir))?;
    {
        let file: File = tmp.as_file().try_clone().map_err(io(tmp.path()))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let perr = |source| DatasetError::Parquet {
            path: tmp.path().to_path_buf(),
            source,
        };
        let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(perr)?;
        w.write(&batch).map_err(perr)?;
        w.close().map_err(perr)?;
    }
    tmp.persist(path).map_err(|e| DatasetError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// Read a progress file written by [`write_progress`].
pub fn read_progress(path: &Path) -> Result<ProgressTable> {
    let t = Table::read(
        path,
        Some(&["index", "episode_index", "frame_index", "progress", "weight"]),
    )?;
    Ok(ProgressTable {
        index: t.i64s("index")?,
        episode_index: t.i64s("episode_index")?,
        frame_index: t.i64s("frame_index")?,
        progress: t.f64s("progress")?,
        weight: t.f64s("weight")?,
        metadata: t
            .schema
            .metadata()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
}

/// `builder` with the mode a plain create gets (0666 for files, 0777 for folders, less the umask), not
/// `tempfile`'s private 0600 / 0700: a dataset or progress file is renamed into place from the temporary
/// and must be readable like any other output.
pub(crate) fn plain_mode<'a, 'b, 'c>(
    builder: &'c mut tempfile::Builder<'a, 'b>,
    folder: bool,
) -> &'c mut tempfile::Builder<'a, 'b> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = if folder { 0o777 } else { 0o666 };
        builder.permissions(std::fs::Permissions::from_mode(mode));
    }
    #[cfg(not(unix))]
    let _ = folder;
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn progress_file_gets_the_mode_of_a_plain_write() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topreward_progress.parquet");
        let table = ProgressTable {
            index: vec![0],
            episode_index: vec![0],
            frame_index: vec![0],
            progress: vec![0.5],
            weight: vec![1.0],
            ..Default::default()
        };
        write_progress(&path, &table).unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), mode(&plain));
        assert_eq!(read_progress(&path).unwrap(), table);
    }
}
