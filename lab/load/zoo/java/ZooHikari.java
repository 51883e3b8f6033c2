// The zoo's java-hikaricp program: the loop of Zoo.java with a connection checked out of a
// HikariCP pool (maximumPoolSize 1, every other pool setting its default, so the pool's own
// validation and connectionTimeout decide what the application sees) for each transaction.
// The LAB_* keys reach Connector/J as the pool's data source properties.

import com.zaxxer.hikari.HikariConfig;
import com.zaxxer.hikari.HikariDataSource;
import java.sql.Connection;
import java.sql.SQLException;

public final class ZooHikari implements Zoo.Source {
    private HikariDataSource pool;

    /** The pool, made on first use; made again if it failed to start (initializationFail). */
    private HikariDataSource pool() {
        if (pool == null) {
            HikariConfig config = new HikariConfig();
            config.setJdbcUrl(Zoo.url());
            config.setUsername(Zoo.env("LAB_USER", ""));
            config.setPassword(Zoo.env("LAB_PASSWORD", ""));
            config.setMaximumPoolSize(1);
            config.setDataSourceProperties(Zoo.driverProperties());
            pool = new HikariDataSource(config);
        }
        return pool;
    }

    @Override
    public Connection get() throws SQLException {
        return pool().getConnection();
    }

    @Override
    public void release(Connection c) throws SQLException {
        c.close();  // back into the pool, which resets it (autocommit) and keeps it
    }

    public static void main(String[] args) {
        Zoo.exitZeroOnTerm();
        Zoo.refuseWhatCannotApply();
        Zoo.line("VERSION HikariCP " + Zoo.jarVersion("com.zaxxer.hikari.HikariDataSource")
            + " (mariadb-java-client " + Zoo.jarVersion("org.mariadb.jdbc.Driver") + ")");
        Zoo.loop(new ZooHikari());
    }
}
