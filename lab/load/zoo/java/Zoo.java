// The zoo's java-connectorj program: MariaDB Connector/J through DriverManager, one long-lived
// connection, the loop and output of lab/load/zoo/README.md. ZooHikari runs the same loop with
// connections taken from a HikariCP pool.
//
// Only the JDK is needed to compile this file: the driver is found by its URL at run time, as
// an application that keeps Connector/J on its class path would find it.

import java.io.FileOutputStream;
import java.io.FileDescriptor;
import java.io.PrintStream;
import java.net.URL;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ThreadLocalRandom;
import java.util.jar.JarInputStream;
import java.util.jar.Manifest;

public final class Zoo {
    /** Where the loop's connections come from: a connect per use, or a pool's checkout. */
    interface Source {
        /** A connection for the next transaction (the same one until close() or an error). */
        Connection get() throws SQLException;

        /** Give the connection back after a transaction (a pool's checkin; a no-op here). */
        void release(Connection c) throws SQLException;
    }

    // lab keys Connector/J 2.7.6 has no option for (lab.config.stacks refuses them first)
    private static final String[][] CANNOT = {
        {"LAB_WRITE_TIMEOUT_MS", "Connector/J has no write timeout"},
        {"LAB_TCP_USER_TIMEOUT_MS", "the JDK cannot set TCP_USER_TIMEOUT"},
        {"LAB_TCP_KEEPIDLE", "Connector/J 2.7.6 has no tcpKeepIdle option"},
        {"LAB_TCP_KEEPINTVL", "Connector/J 2.7.6 has no tcpKeepInterval option"},
        {"LAB_TCP_KEEPCNT", "Connector/J 2.7.6 has no tcpKeepCount option"},
    };

    private static final PrintStream OUT = new PrintStream(
        new FileOutputStream(FileDescriptor.out), true);
    private static final Map<String, String> ENV = System.getenv();

    private Zoo() {
    }

    /** One stdout line, stamped and flushed at once (the lab reads it as it comes). */
    static synchronized void line(String text) {
        OUT.println(System.currentTimeMillis() + " " + text);
        OUT.flush();
    }

    /** The error as the application sees it: the exception's class and message, one line. */
    static void error(Throwable e) {
        line("ERR " + oneLine(e));
        StringBuilder causes = new StringBuilder();
        for (Throwable c = e.getCause(); c != null && c != c.getCause(); c = c.getCause()) {
            causes.append(causes.length() == 0 ? "caused by " : " <- ").append(oneLine(c));
        }
        if (causes.length() > 0) {
            System.err.println(causes);  // for whoever reads the log: not the application's
        }
    }

    static String oneLine(Throwable e) {
        return e.toString().replaceAll("\\s+", " ").trim();
    }

    static String env(String name, String fallback) {
        String v = ENV.get(name);
        return v == null || v.isEmpty() ? fallback : v;
    }

    static int envInt(String name, int fallback) {
        return Integer.parseInt(env(name, String.valueOf(fallback)));
    }

    /** Exit 64 with one line on stderr when a key is set that the library cannot apply. */
    static void refuseWhatCannotApply() {
        for (String[] c : CANNOT) {
            if (ENV.get(c[0]) != null && !ENV.get(c[0]).isEmpty()) {
                System.err.println(c[0] + " is set but " + c[1]);
                System.err.flush();
                Runtime.getRuntime().halt(64);
            }
        }
    }

    /** The LAB_* keys as Connector/J's own properties; an unset key keeps the driver default. */
    static Properties driverProperties() {
        Properties p = new Properties();
        String[][] map = {
            {"LAB_CONNECT_TIMEOUT_MS", "connectTimeout"},
            {"LAB_READ_TIMEOUT_MS", "socketTimeout"},
        };
        for (String[] m : map) {
            if (ENV.get(m[0]) != null && !ENV.get(m[0]).isEmpty()) {
                p.setProperty(m[1], ENV.get(m[0]));
            }
        }
        String keepalive = ENV.get("LAB_SO_KEEPALIVE");
        if (keepalive != null && !keepalive.isEmpty()) {
            p.setProperty("tcpKeepAlive", "1".equals(keepalive) ? "true" : "false");
        }
        return p;
    }

    static String url() {
        return "jdbc:mariadb://" + env("LAB_HOST", "127.0.0.1") + ":" + env("LAB_PORT", "3306")
            + "/" + env("LAB_DATABASE", "");
    }

    /** Bundle-Version of the jar that holds `cls` (the Debian jars carry no other version). */
    static String jarVersion(String cls) {
        try {
            URL where = Class.forName(cls).getProtectionDomain().getCodeSource().getLocation();
            try (JarInputStream jar = new JarInputStream(where.openStream())) {
                Manifest m = jar.getManifest();
                String v = m == null ? null : m.getMainAttributes().getValue("Bundle-Version");
                return v == null ? "unknown" : v;
            }
        } catch (Exception e) {
            return "unknown";
        }
    }

    /** BEGIN; SELECT; UPDATE; COMMIT on a random table and row, as JDBC writes it. */
    static void transaction(Connection c, int tables, int size) throws SQLException {
        ThreadLocalRandom rnd = ThreadLocalRandom.current();
        String table = "sbtest" + (1 + rnd.nextInt(tables));
        int id = 1 + rnd.nextInt(size);
        c.setAutoCommit(false);
        try (PreparedStatement s = c.prepareStatement("SELECT c FROM " + table + " WHERE id=?")) {
            s.setInt(1, id);
            try (ResultSet r = s.executeQuery()) {
                while (r.next()) {
                    r.getString(1);
                }
            }
        }
        try (PreparedStatement u = c.prepareStatement(
                "UPDATE " + table + " SET k=k+1 WHERE id=?")) {
            u.setInt(1, id);
            u.executeUpdate();
        }
        c.commit();
    }

    static void quietly(Connection c) {
        if (c != null) {
            try {
                c.close();
            } catch (SQLException | RuntimeException ignored) {
                // the connection is already broken: closing it is all that is left
            }
        }
    }

    static void sleep(int ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    /** Transactions for ever; on an error, close, pause and connect again. */
    static void loop(Source source) {
        int tables = envInt("LAB_TABLES", 4);
        int size = envInt("LAB_TABLE_SIZE", 1000);
        int pause = envInt("LAB_PAUSE_MS", 10);
        int reconnectPause = envInt("LAB_RECONNECT_PAUSE_MS", 5);
        boolean connected = false;
        while (true) {
            Connection c = null;
            try {
                c = source.get();
                if (!connected) {
                    line("CONNECTED");
                    connected = true;
                }
                transaction(c, tables, size);
                source.release(c);
                line("OK");
                sleep(pause);
            } catch (SQLException | RuntimeException e) {
                error(e);
                quietly(c);
                connected = false;
                sleep(reconnectPause);
            }
        }
    }

    /** SIGTERM (and SIGINT) end the program with 0: the lab's normal stop. */
    static void exitZeroOnTerm() {
        Runtime.getRuntime().addShutdownHook(new Thread(() -> Runtime.getRuntime().halt(0)));
    }

    /** One connection from DriverManager, kept until it fails. */
    static final class Direct implements Source {
        private final Properties props;
        private Connection kept;

        Direct(Properties props) {
            this.props = props;
        }

        @Override
        public Connection get() throws SQLException {
            if (kept == null || kept.isClosed()) {
                kept = null;
                kept = DriverManager.getConnection(url(), props);
            }
            return kept;
        }

        @Override
        public void release(Connection c) {
            // kept open: the next transaction runs on the same connection
        }
    }

    public static void main(String[] args) {
        exitZeroOnTerm();
        refuseWhatCannotApply();
        line("VERSION mariadb-java-client " + jarVersion("org.mariadb.jdbc.Driver"));
        Properties props = driverProperties();
        props.setProperty("user", env("LAB_USER", ""));
        props.setProperty("password", env("LAB_PASSWORD", ""));
        loop(new Direct(props));
    }
}
