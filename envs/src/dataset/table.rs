//! Reading columns out of parquet files as plain vectors, with errors that name the file and column.
//!
//! LeRobot writes its tables through pyarrow / Hugging Face `datasets` (snappy compression); vectors such
//! as `observation.state` are `fixed_size_list<float>` in v3.0 files and `list<float>` in older ones, so
//! both are accepted, as are 32- and 64-bit numbers where LeRobot's own loader would cast.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, SchemaRef};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::error::{DatasetError, Result, io};

/// Some columns of one parquet file, concatenated over its row groups.
pub(crate) struct Table {
    pub path: PathBuf,
    pub schema: SchemaRef,
    batches: Vec<RecordBatch>,
}

impl Table {
    /// Read the named columns (all when `columns` is `None`). A missing column is an error naming it.
    pub fn read(path: &Path, columns: Option<&[&str]>) -> Result<Self> {
        // The parquet crate (60.1) panics on some corrupt footers (e.g. a negative column offset, found by
        // fuzzing); a damaged file must be an error naming it, not a crash of the whole program.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Self::read_unguarded(path, columns)
        }))
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown error");
            Err(DatasetError::Inconsistent {
                path: path.to_path_buf(),
                reason: format!("corrupt parquet file: {message}"),
            })
        })
    }

    fn read_unguarded(path: &Path, columns: Option<&[&str]>) -> Result<Self> {
        let file = File::open(path).map_err(io(path))?;
        let perr = |source| DatasetError::Parquet {
            path: path.to_path_buf(),
            source,
        };
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(perr)?;
        let schema = builder.schema().clone();
        let builder = match columns {
            Some(names) => {
                let mut roots = Vec::with_capacity(names.len());
                for name in names {
                    let idx = schema.index_of(name).map_err(|_| DatasetError::MissingColumn {
                        path: path.to_path_buf(),
                        column: name.to_string(),
                    })?;
                    roots.push(idx);
                }
                let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
                builder.with_projection(mask)
            }
            None => builder,
        };
        let reader = builder.build().map_err(perr)?;
        let mut batches = Vec::new();
        for batch in reader {
            batches.push(batch.map_err(|source| DatasetError::Arrow {
                path: path.to_path_buf(),
                source,
            })?);
        }
        Ok(Self {
            path: path.to_path_buf(),
            schema,
            batches,
        })
    }

    /// Whether the file's schema has a top-level column of that name.
    pub fn has_column(&self, name: &str) -> bool {
        self.schema.index_of(name).is_ok()
    }

    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    fn chunks(&self, column: &str) -> Result<Vec<ArrayRef>> {
        let mut out = Vec::with_capacity(self.batches.len());
        for batch in &self.batches {
            let arr = batch
                .column_by_name(column)
                .ok_or_else(|| DatasetError::MissingColumn {
                    path: self.path.clone(),
                    column: column.to_string(),
                })?;
            out.push(arr.clone());
        }
        Ok(out)
    }

    fn type_error(&self, column: &str, found: &DataType, expected: &str) -> DatasetError {
        DatasetError::ColumnType {
            path: self.path.clone(),
            column: column.to_string(),
            found: found.to_string(),
            expected: expected.to_string(),
        }
    }

    fn null_error(&self, column: &str, row: usize) -> DatasetError {
        DatasetError::NullValue {
            path: self.path.clone(),
            column: column.to_string(),
            row,
        }
    }

    /// An integer column (int64 or int32).
    pub fn i64s(&self, column: &str) -> Result<Vec<i64>> {
        let mut out = Vec::with_capacity(self.num_rows());
        for arr in self.chunks(column)? {
            if arr.null_count() > 0 {
                let row = (0..arr.len()).find(|&i| arr.is_null(i)).unwrap_or(0);
                return Err(self.null_error(column, out.len() + row));
            }
            match arr.data_type() {
                DataType::Int64 => out.extend(arr.as_primitive::<Int64Type>().values().iter().copied()),
                DataType::Int32 => out.extend(
                    arr.as_primitive::<Int32Type>()
                        .values()
                        .iter()
                        .map(|&v| i64::from(v)),
                ),
                other => return Err(self.type_error(column, other, "int64")),
            }
        }
        Ok(out)
    }

    /// A floating-point column (float32 or float64).
    pub fn f64s(&self, column: &str) -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(self.num_rows());
        for arr in self.chunks(column)? {
            if arr.null_count() > 0 {
                let row = (0..arr.len()).find(|&i| arr.is_null(i)).unwrap_or(0);
                return Err(self.null_error(column, out.len() + row));
            }
            match arr.data_type() {
                DataType::Float32 => out.extend(
                    arr.as_primitive::<Float32Type>()
                        .values()
                        .iter()
                        .map(|&v| f64::from(v)),
                ),
                DataType::Float64 => out.extend(arr.as_primitive::<Float64Type>().values().iter().copied()),
                other => return Err(self.type_error(column, other, "float32 or float64")),
            }
        }
        Ok(out)
    }

    /// A vector column: `fixed_size_list`, `list` or `large_list` of float32/float64, one vector per row.
    pub fn vectors(&self, column: &str) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(self.num_rows());
        for arr in self.chunks(column)? {
            let (values, offsets): (ArrayRef, Vec<usize>) = match arr.data_type() {
                DataType::FixedSizeList(_, n) => {
                    let l = arr.as_fixed_size_list();
                    let n = *n as usize;
                    let base = l.offset();
                    (
                        l.values().clone(),
                        (0..=l.len()).map(|i| (base + i) * n).collect(),
                    )
                }
                DataType::List(_) => {
                    let l = arr.as_list::<i32>();
                    (
                        l.values().clone(),
                        l.value_offsets().iter().map(|&o| o as usize).collect(),
                    )
                }
                DataType::LargeList(_) => {
                    let l = arr.as_list::<i64>();
                    (
                        l.values().clone(),
                        l.value_offsets().iter().map(|&o| o as usize).collect(),
                    )
                }
                other => return Err(self.type_error(column, other, "a list of float32")),
            };
            let flat: Vec<f32> = match values.data_type() {
                DataType::Float32 => values.as_primitive::<Float32Type>().values().to_vec(),
                DataType::Float64 => values
                    .as_primitive::<Float64Type>()
                    .values()
                    .iter()
                    .map(|&v| v as f32)
                    .collect(),
                other => return Err(self.type_error(column, other, "list elements of float32")),
            };
            for (row, w) in offsets.windows(2).enumerate() {
                if arr.is_null(row) {
                    return Err(self.null_error(column, out.len()));
                }
                out.push(flat[w[0]..w[1]].to_vec());
            }
        }
        Ok(out)
    }

    /// A string column (utf8 or large_utf8).
    pub fn strings(&self, column: &str) -> Result<Vec<String>> {
        let mut out = Vec::with_capacity(self.num_rows());
        for arr in self.chunks(column)? {
            for row in 0..arr.len() {
                if arr.is_null(row) {
                    return Err(self.null_error(column, out.len()));
                }
                let s = match arr.data_type() {
                    DataType::Utf8 => arr.as_string::<i32>().value(row).to_string(),
                    DataType::LargeUtf8 => arr.as_string::<i64>().value(row).to_string(),
                    DataType::Utf8View => arr.as_string_view().value(row).to_string(),
                    other => return Err(self.type_error(column, other, "string")),
                };
                out.push(s);
            }
        }
        Ok(out)
    }

    /// A list-of-strings column (`tasks` of v3.0 episodes).
    pub fn string_lists(&self, column: &str) -> Result<Vec<Vec<String>>> {
        let mut out = Vec::with_capacity(self.num_rows());
        for arr in self.chunks(column)? {
            let (values, offsets): (ArrayRef, Vec<usize>) = match arr.data_type() {
                DataType::List(_) => {
                    let l = arr.as_list::<i32>();
                    (
                        l.values().clone(),
                        l.value_offsets().iter().map(|&o| o as usize).collect(),
                    )
                }
                DataType::LargeList(_) => {
                    let l = arr.as_list::<i64>();
                    (
                        l.values().clone(),
                        l.value_offsets().iter().map(|&o| o as usize).collect(),
                    )
                }
                other => return Err(self.type_error(column, other, "list<string>")),
            };
            let get = |i: usize| -> Result<String> {
                match values.data_type() {
                    DataType::Utf8 => Ok(values.as_string::<i32>().value(i).to_string()),
                    DataType::LargeUtf8 => Ok(values.as_string::<i64>().value(i).to_string()),
                    DataType::Utf8View => Ok(values.as_string_view().value(i).to_string()),
                    other => Err(self.type_error(column, other, "list<string>")),
                }
            };
            for (row, w) in offsets.windows(2).enumerate() {
                if arr.is_null(row) {
                    return Err(self.null_error(column, out.len()));
                }
                out.push((w[0]..w[1]).map(get).collect::<Result<Vec<_>>>()?);
            }
        }
        Ok(out)
    }
}
