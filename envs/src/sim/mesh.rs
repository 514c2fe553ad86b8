//! Binary STL reading and vertex-clustering decimation.
//!
//! The SO-101 CAD meshes total ~320k triangles; software rendering (Mesa llvmpipe) of two 128x128 cameras
//! spends most of its time on them, and MuJoCo's convex hulls for collision take seconds to build. Vertex
//! clustering (Rossignac & Borrel 1993) snaps vertices to a uniform grid and drops triangles that collapse:
//! at a 2 mm cell the arm keeps its silhouette at camera resolution with ~10x fewer triangles.

use std::collections::HashMap;
use std::path::Path;

use super::SimError;

/// A triangle soup: vertices and index triples.
#[derive(Debug, Clone, Default)]
pub struct Mesh {
    pub vertices: Vec<[f32; 3]>,
    pub triangles: Vec<[u32; 3]>,
}

/// Reads a binary STL file (80-byte header, u32 count, 50 bytes per triangle).
pub fn read_stl(path: &Path) -> Result<Mesh, SimError> {
    let bytes = std::fs::read(path).map_err(|source| SimError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| SimError::Mesh {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < 84 {
        return Err(bad(format!(
            "{} bytes is shorter than the 84-byte STL header",
            bytes.len()
        )));
    }
    let count = u32::from_le_bytes([bytes[80], bytes[81], bytes[82], bytes[83]]) as usize;
    let expected = 84 + count * 50;
    if bytes.len() < expected {
        return Err(bad(format!(
            "{count} triangles need {expected} bytes, file has {}",
            bytes.len()
        )));
    }
    let mut mesh = Mesh::default();
    let mut index: HashMap<[u32; 3], u32> = HashMap::new();
    for t in 0..count {
        let base = 84 + t * 50 + 12; // skip the facet normal
        let mut tri = [0u32; 3];
        for (k, slot) in tri.iter_mut().enumerate() {
            let mut v = [0f32; 3];
            for (c, value) in v.iter_mut().enumerate() {
                let o = base + k * 12 + c * 4;
                *value = f32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
            }
            let key = v.map(f32::to_bits);
            *slot = *index.entry(key).or_insert_with(|| {
                mesh.vertices.push(v);
                (mesh.vertices.len() - 1) as u32
            });
        }
        mesh.triangles.push(tri);
    }
    Ok(mesh)
}

/// Snaps vertices to a grid of `cell` metres, merging each cell's vertices into their mean, and drops
/// triangles that become degenerate or duplicate.
pub fn decimate(mesh: &Mesh, cell: f32) -> Mesh {
    if cell <= 0.0 {
        return mesh.clone();
    }
    let mut cell_of: HashMap<[i64; 3], u32> = HashMap::new();
    let mut sums: Vec<([f64; 3], u32)> = Vec::new();
    let remap: Vec<u32> = mesh
        .vertices
        .iter()
        .map(|v| {
            let key = v.map(|x| (x / cell).floor() as i64);
            let id = *cell_of.entry(key).or_insert_with(|| {
                sums.push(([0.0; 3], 0));
                (sums.len() - 1) as u32
            });
            let s = &mut sums[id as usize];
            for c in 0..3 {
                s.0[c] += f64::from(v[c]);
            }
            s.1 += 1;
            id
        })
        .collect();
    let vertices = sums
        .iter()
        .map(|(s, n)| s.map(|x| (x / f64::from(*n)) as f32))
        .collect();
    let mut seen = std::collections::HashSet::new();
    let triangles = mesh
        .triangles
        .iter()
        .map(|t| t.map(|i| remap[i as usize]))
        .filter(|t| t[0] != t[1] && t[1] != t[2] && t[0] != t[2])
        .filter(|t| {
            // Same triangle with the same winding, whatever vertex it starts at.
            let r = t
                .iter()
                .position(|x| x == t.iter().min().unwrap_or(&t[0]))
                .unwrap_or(0);
            seen.insert([t[r], t[(r + 1) % 3], t[(r + 2) % 3]])
        })
        .collect();
    Mesh { vertices, triangles }
}

/// Writes a binary STL (normals computed from the winding).
pub fn write_stl(mesh: &Mesh, path: &Path) -> Result<(), SimError> {
    let mut out = Vec::with_capacity(84 + mesh.triangles.len() * 50);
    let mut header = [0u8; 80];
    header[..21].copy_from_slice(b"toprl decimated mesh ");
    out.extend_from_slice(&header);
    out.extend_from_slice(&(mesh.triangles.len() as u32).to_le_bytes());
    for t in &mesh.triangles {
        let [a, b, c] = t.map(|i| mesh.vertices[i as usize]);
        let u = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
        let v = [c[0] - a[0], c[1] - a[1], c[2] - a[2]];
        let n = [
            u[1] * v[2] - u[2] * v[1],
            u[2] * v[0] - u[0] * v[2],
            u[0] * v[1] - u[1] * v[0],
        ];
        let len = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt().max(1e-20);
        for x in n
            .map(|x| x / len)
            .iter()
            .chain(a.iter())
            .chain(b.iter())
            .chain(c.iter())
        {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.extend_from_slice(&[0, 0]);
    }
    std::fs::write(path, out).map_err(|source| SimError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cube_mesh() -> Mesh {
        // Two triangles per face of a unit cube, plus a sliver that collapses at 0.1 m cells.
        let v = |x: f32, y: f32, z: f32| [x, y, z];
        Mesh {
            vertices: vec![v(0., 0., 0.), v(1., 0., 0.), v(1., 1., 0.), v(0.01, 0.01, 0.0)],
            triangles: vec![[0, 1, 2], [0, 3, 1]],
        }
    }

    #[test]
    fn stl_round_trip_and_decimation_drops_collapsed_triangles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.stl");
        let mesh = cube_mesh();
        write_stl(&mesh, &path).unwrap();
        let back = read_stl(&path).unwrap();
        assert_eq!(back.triangles.len(), 2);
        assert_eq!(back.vertices.len(), 4);
        let small = decimate(&back, 0.1);
        assert_eq!(small.triangles.len(), 1, "the sliver collapses into one cell");
        assert_eq!(small.vertices.len(), 3);
    }

    #[test]
    fn truncated_stl_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.stl");
        std::fs::write(&path, [0u8; 90]).unwrap();
        let mut bytes = vec![0u8; 84];
        bytes[80] = 5;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(read_stl(&path), Err(SimError::Mesh { .. })));
    }
}
