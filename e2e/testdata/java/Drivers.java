// PgJDBC with its default settings and its usual usage, as two clients of
// different tenants taking turns. Run by e2e/pool_jdbc_test.go, through
// pgtenant (both pool modes) and straight against PostgreSQL, as
//   java -cp postgresql.jar Drivers.java URL USER_A PW_A TENANT_A NAMES_A USER_B PW_B TENANT_B NAMES_B [OPTIONS_A OPTIONS_B]
// (OPTIONS: startup options, direct runs only). Prints one line per check:
// "ok<TAB>check" or "FAIL<TAB>check<TAB>SQLSTATE<TAB>detail".

import java.sql.*;
import java.util.*;

public class Drivers {
  static final String PROBE = "SELECT current_setting('app.tenant_id'), coalesce(string_agg(name, ',' ORDER BY id), '') FROM projects";

  record Client(String user, String password, String tenant, String names, String options) {}

  static String url;
  static Client a, b;

  interface Check { void run() throws Exception; }

  static void check(String name, Check c) {
    try {
      c.run();
      System.out.println("ok\t" + name);
    } catch (Throwable e) {
      String state = e instanceof SQLException se && se.getSQLState() != null ? se.getSQLState() : "";
      System.out.println("FAIL\t" + name + "\t" + state + "\t" + e.toString().replace('\n', ' ').replace('\t', ' '));
    }
  }

  static Connection connect(Client c, String... props) throws SQLException {
    Properties p = new Properties();
    p.setProperty("user", c.user);
    p.setProperty("password", c.password);
    if (!c.options.isEmpty()) p.setProperty("options", c.options);
    for (int i = 0; i + 1 < props.length; i += 2) p.setProperty(props[i], props[i + 1]);
    return DriverManager.getConnection(url, p);
  }

  static void want(Client c, ResultSet r, String what) throws Exception {
    if (!r.next()) throw new Exception(what + ": no row");
    String tenant = r.getString(1), names = r.getString(2);
    if (!tenant.equals(c.tenant) || !names.equals(c.names))
      throw new Exception(what + ": ran as " + tenant + " seeing " + names + ", want " + c.tenant + " seeing " + c.names);
  }

  static void wantEq(Object got, Object want, String what) throws Exception {
    if (!Objects.equals(got, want)) throw new Exception(what + ": got " + got + ", want " + want);
  }

  static String one(Connection conn, String sql) throws SQLException {
    try (Statement s = conn.createStatement(); ResultSet r = s.executeQuery(sql)) {
      r.next();
      return r.getString(1);
    }
  }

  public static void main(String[] args) throws Exception {
    url = args[0];
    String oa = args.length > 9 ? args[9] : "", ob = args.length > 10 ? args[10] : "";
    a = new Client(args[1], args[2], args[3], args[4], oa);
    b = new Client(args[5], args[6], args[7], args[8], ob);

    check("default settings", () -> {
      try (Connection ca = connect(a); Connection cb = connect(b)) {
        for (int i = 0; i < 3; i++) {
          for (Object[] x : new Object[][] {{ca, a}, {cb, b}}) {
            Connection conn = (Connection) x[0];
            Client c = (Client) x[1];
            try (Statement s = conn.createStatement(); ResultSet r = s.executeQuery(PROBE)) { want(c, r, "statement"); }
          }
        }
      }
    });

    check("prepareThreshold crossed", () -> {
      // The fifth execution of a PreparedStatement prepares it server-side.
      try (Connection ca = connect(a); Connection cb = connect(b);
           PreparedStatement pa = ca.prepareStatement(PROBE + " WHERE length(name) > ?");
           PreparedStatement pb = cb.prepareStatement(PROBE + " WHERE id > ?")) {
        for (int i = 0; i < 8; i++) {
          pa.setInt(1, 0);
          try (ResultSet r = pa.executeQuery()) { want(a, r, "A execution " + i); }
          pb.setLong(1, 0);
          try (ResultSet r = pb.executeQuery()) { want(b, r, "B execution " + i); }
        }
      }
    });

    check("setClientInfo ApplicationName", () -> {
      try (Connection ca = connect(a); Connection cb = connect(b)) {
        ca.setClientInfo("ApplicationName", "jdbc_renamed");
        wantEq(one(ca, "SHOW application_name"), "jdbc_renamed", "A");
        wantEq(one(cb, "SHOW application_name"), "PostgreSQL JDBC Driver", "B");
        wantEq(one(ca, "SHOW application_name"), "jdbc_renamed", "A again");
      }
    });

    check("readOnlyMode=always", () -> {
      try (Connection ca = connect(a, "readOnlyMode", "always"); Connection cb = connect(b)) {
        ca.setReadOnly(true);
        wantEq(one(ca, "SHOW transaction_read_only"), "on", "A read-only");
        wantEq(one(cb, "SHOW transaction_read_only"), "off", "B");
        try (Statement s = ca.createStatement()) {
          s.executeUpdate("INSERT INTO projects (tenant_id, name) VALUES (current_setting('app.tenant_id')::uuid, 'ro')");
          throw new Exception("an INSERT ran in a read-only session");
        } catch (SQLException e) {
          wantEq(e.getSQLState(), "25006", "INSERT while read-only");
        }
        ca.setReadOnly(false);
        wantEq(one(ca, "SHOW transaction_read_only"), "off", "A read-write again");
      }
    });

    for (String autosave : new String[] {"conservative", "always"}) {
      check("autosave=" + autosave, () -> {
        // A SAVEPOINT ahead of every statement of a transaction.
        try (Connection ca = connect(a, "autosave", autosave); Connection cb = connect(b)) {
          ca.setAutoCommit(false);
          try (Statement s = ca.createStatement()) {
            try (ResultSet r = s.executeQuery(PROBE)) { want(a, r, "in the transaction"); }
            try {
              s.executeQuery("SELECT 1/0");
              throw new Exception("1/0 did not fail");
            } catch (SQLException e) {
              wantEq(e.getSQLState(), "22012", "1/0");
            }
            if (autosave.equals("always")) {
              // Rolled back to the savepoint: the transaction goes on.
              try (ResultSet r = s.executeQuery(PROBE)) { want(a, r, "after the failed statement"); }
              ca.commit();
            } else {
              ca.rollback();
            }
            try (ResultSet r = s.executeQuery(PROBE)) { want(a, r, "next transaction"); }
          }
          ca.commit();
          try (Statement s = cb.createStatement(); ResultSet r = s.executeQuery(PROBE)) { want(b, r, "B"); }
        }
      });
    }

    check("fetch size", () -> {
      // A fetch size in a transaction reads through a portal, a row at a time.
      try (Connection ca = connect(a); Connection cb = connect(b)) {
        ca.setAutoCommit(false);
        try (PreparedStatement p = ca.prepareStatement("SELECT current_setting('app.tenant_id'), name FROM projects ORDER BY id")) {
          p.setFetchSize(1);
          List<String> names = new ArrayList<>();
          try (ResultSet r = p.executeQuery()) {
            while (r.next()) {
              wantEq(r.getString(1), a.tenant, "row's tenant");
              names.add(r.getString(2));
            }
          }
          wantEq(String.join(",", names), a.names, "names");
        }
        ca.commit();
        try (Statement s = cb.createStatement(); ResultSet r = s.executeQuery(PROBE)) { want(b, r, "B"); }
      }
    });

    check("DatabaseMetaData", () -> {
      // What DBeaver and Metabase ask on connect.
      try (Connection ca = connect(a)) {
        DatabaseMetaData md = ca.getMetaData();
        md.getDatabaseProductVersion();
        md.getIdentifierQuoteString();
        md.getSQLKeywords();
        try (ResultSet r = md.getCatalogs()) { if (!r.next()) throw new Exception("getCatalogs: nothing"); }
        try (ResultSet r = md.getSchemas()) { if (!r.next()) throw new Exception("getSchemas: nothing"); }
        try (ResultSet r = md.getTableTypes()) { if (!r.next()) throw new Exception("getTableTypes: nothing"); }
        boolean found = false;
        try (ResultSet r = md.getTables(null, "public", "%", new String[] {"TABLE"})) {
          while (r.next()) found |= r.getString("TABLE_NAME").equals("projects");
        }
        if (!found) throw new Exception("getTables: no projects");
        try (ResultSet r = md.getColumns(null, "public", "projects", "%")) { if (!r.next()) throw new Exception("getColumns: nothing"); }
        try (ResultSet r = md.getPrimaryKeys(null, "public", "projects")) { if (!r.next()) throw new Exception("getPrimaryKeys: nothing"); }
        try (ResultSet r = md.getImportedKeys(null, "public", "projects")) { r.next(); }
        try (ResultSet r = md.getIndexInfo(null, "public", "projects", false, true)) { r.next(); }
        try (ResultSet r = md.getTypeInfo()) { if (!r.next()) throw new Exception("getTypeInfo: nothing"); }
        try (ResultSet r = md.getFunctions(null, "public", "%")) { r.next(); }
        try (Statement s = ca.createStatement(); ResultSet r = s.executeQuery(PROBE)) { want(a, r, "after the metadata"); }
      }
    });
  }
}
