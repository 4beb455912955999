//! The table as other implementations read it: pyiceberg and DuckDB's Iceberg extension,
//! which `make test` installs from PyPI (DuckDB's extensions loaded from their packages'
//! files, nothing downloaded).

use crate::TestCluster;

/// Rows of the current snapshot of `namespace.table` in the cluster's SQL catalog, as
/// pyiceberg and DuckDB count them.
pub fn row_counts_by_other_readers(
    cluster: &TestCluster,
    namespace: &str,
    table: &str,
) -> (u64, u64) {
    let dir = cluster.dir.path().display();
    let script = format!(
        r#"
import glob, os, sqlite3
import duckdb, duckdb_extension_avro, duckdb_extension_iceberg
from pyiceberg.catalog.sql import SqlCatalog
catalog = SqlCatalog("{catalog}", uri="sqlite:///{dir}/catalog.db", warehouse="file://{dir}/warehouse")
pyiceberg_rows = catalog.load_table("{namespace}.{table}").scan().to_arrow().num_rows
def extension(package, name):
    root = os.path.dirname(package.__file__)
    return glob.glob(os.path.join(root, "extensions", "*", name + ".duckdb_extension"))[0]
con = duckdb.connect(config={{"autoinstall_known_extensions": "false", "autoload_known_extensions": "false"}})
con.execute("LOAD '%s'" % extension(duckdb_extension_avro, "avro"))
con.execute("LOAD '%s'" % extension(duckdb_extension_iceberg, "iceberg"))
location = sqlite3.connect("{dir}/catalog.db").execute(
    "SELECT metadata_location FROM iceberg_tables WHERE table_namespace = ? AND table_name = ?",
    ("{namespace}", "{table}")).fetchone()[0]
duckdb_rows = con.execute("SELECT count(*) FROM iceberg_scan('%s')" % location).fetchone()[0]
print(pyiceberg_rows, duckdb_rows)
"#,
        catalog = sluice_core::spec::DEFAULT_CATALOG_NAME,
    );
    let stdout = TestCluster::python(&script);
    let counts: Vec<u64> = stdout
        .split_whitespace()
        .map(|f| f.parse().expect("a row count"))
        .collect();
    (counts[0], counts[1])
}
