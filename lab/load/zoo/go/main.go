// The go-sql-driver stack of the client zoo (contract: lab/load/zoo/README.md).
//
// An application's long-lived session in Go: one *sql.DB (database/sql's pool, at most one
// open connection and none kept idle) and one *sql.Conn taken from it and held for the
// program's life. Every transaction runs on that Conn; on any error the Conn is closed (with
// no idle slot, database/sql closes the driver's connection) and a new one is taken.
//
// The lab's client keys become the driver's DSN parameters (timeout, readTimeout,
// writeTimeout); the socket options need a DialContext (mysql.RegisterDialContext), used only
// when one of them is set so that, unset, the driver dials as it does by default. Built by
// lab.load.zoo.native, offline, with GO111MODULE=off against Debian's packaged driver.
package main

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"
)

// driverVersion is the packaged driver's (-ldflags -X, from dpkg: the driver has no constant)
var driverVersion = "unknown"

const (
	labNet    = "lab-tcp"
	tcpUserTO = 0x12 // TCP_USER_TIMEOUT (linux/tcp.h); the syscall package lacks it
)

// driverLog keeps the driver's last logged line: go-sql-driver logs the real cause ("read tcp
// ...: i/o timeout") and returns only "invalid connection" to the application.
type driverLog struct {
	mu   sync.Mutex
	last string
}

func (l *driverLog) Print(v ...interface{}) {
	line := strings.TrimSpace(fmt.Sprint(v...))
	l.mu.Lock()
	l.last = line
	l.mu.Unlock()
	fmt.Fprintln(os.Stderr, "[mysql]", line)
}

func (l *driverLog) take() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	line := l.last
	l.last = ""
	return line
}

var logged = &driverLog{}

func say(format string, args ...interface{}) {
	line := fmt.Sprintf(format, args...)
	fmt.Printf("%d %s\n", time.Now().UnixMilli(), strings.ReplaceAll(line, "\n", " "))
}

// envInt reads an integer variable; ok is false when it is unset (the library's default).
func envInt(name string) (value int, ok bool) {
	text := os.Getenv(name)
	if text == "" {
		return 0, false
	}
	value, err := strconv.Atoi(text)
	if err != nil {
		refuse(fmt.Sprintf("%s=%q is not an integer", name, text))
	}
	return value, true
}

func refuse(why string) {
	fmt.Fprintln(os.Stderr, "go-sql-driver:", why)
	os.Exit(64)
}

func millis(name string) time.Duration {
	ms, _ := envInt(name)
	return time.Duration(ms) * time.Millisecond
}

// sockOpts are the lab's socket keys; set says which were given.
type sockOpts struct {
	userTimeoutMs, keepIdle, keepIntvl, keepCnt, keepAlive int
	set                                                    map[string]bool
}

func readSockOpts() sockOpts {
	o := sockOpts{set: map[string]bool{}}
	for name, field := range map[string]*int{
		"LAB_TCP_USER_TIMEOUT_MS": &o.userTimeoutMs, "LAB_TCP_KEEPIDLE": &o.keepIdle,
		"LAB_TCP_KEEPINTVL": &o.keepIntvl, "LAB_TCP_KEEPCNT": &o.keepCnt,
		"LAB_SO_KEEPALIVE": &o.keepAlive,
	} {
		if v, ok := envInt(name); ok {
			*field = v
			o.set[name] = true
		}
	}
	return o
}

func (o sockOpts) off() bool { return o.set["LAB_SO_KEEPALIVE"] && o.keepAlive == 0 }

// control runs on the socket before connect: TCP_USER_TIMEOUT bounds the handshake too.
func (o sockOpts) control(_, _ string, raw syscall.RawConn) error {
	if !o.set["LAB_TCP_USER_TIMEOUT_MS"] {
		return nil
	}
	var serr error
	err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTO, o.userTimeoutMs)
	})
	if err != nil {
		return err
	}
	return serr
}

// afterConnect sets what net.Dialer has no field for: TCP_KEEPINTVL (the Dialer's KeepAlive
// sets it equal to the idle time) and TCP_KEEPCNT.
func (o sockOpts) afterConnect(c *net.TCPConn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		if o.set["LAB_TCP_KEEPINTVL"] {
			serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL,
				o.keepIntvl)
		}
		if serr == nil && o.set["LAB_TCP_KEEPCNT"] {
			serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT,
				o.keepCnt)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// noKeepAlive hides the *net.TCPConn type: the driver calls SetKeepAlive(true) on every
// *net.TCPConn it dials, so a dialer's KeepAlive < 0 alone does not keep keepalive off.
type noKeepAlive struct{ *net.TCPConn }

func (o sockOpts) dial(ctx context.Context, addr string) (net.Conn, error) {
	d := net.Dialer{Control: o.control} // the driver puts its `timeout` on ctx
	if o.off() {
		d.KeepAlive = -1
	} else if o.set["LAB_TCP_KEEPIDLE"] {
		d.KeepAlive = time.Duration(o.keepIdle) * time.Second
	}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := c.(*net.TCPConn)
	if err := o.afterConnect(tc); err != nil {
		c.Close()
		return nil, err
	}
	if o.off() {
		return noKeepAlive{tc}, nil
	}
	return c, nil
}

func config() *mysql.Config {
	cfg := mysql.NewConfig()
	cfg.User, cfg.Passwd, cfg.DBName = os.Getenv("LAB_USER"), os.Getenv("LAB_PASSWORD"),
		os.Getenv("LAB_DATABASE")
	cfg.Net = "tcp"
	cfg.Addr = net.JoinHostPort(os.Getenv("LAB_HOST"), os.Getenv("LAB_PORT"))
	cfg.Timeout = millis("LAB_CONNECT_TIMEOUT_MS")
	cfg.ReadTimeout = millis("LAB_READ_TIMEOUT_MS")
	cfg.WriteTimeout = millis("LAB_WRITE_TIMEOUT_MS")
	if o := readSockOpts(); len(o.set) > 0 {
		mysql.RegisterDialContext(labNet, o.dial)
		cfg.Net = labNet
	}
	return cfg
}

// failed prints the error the application got, with the driver's own logged cause.
func failed(err error) {
	if cause := logged.take(); cause != "" && cause != err.Error() {
		say("ERR %v (driver log: %s)", err, cause)
		return
	}
	say("ERR %v", err)
}

func transaction(ctx context.Context, conn *sql.Conn, tables, size int) error {
	table := fmt.Sprintf("sbtest%d", rand.Intn(tables)+1)
	id := rand.Intn(size) + 1
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	var c string
	if err = tx.QueryRowContext(ctx, "SELECT c FROM "+table+" WHERE id=?", id).Scan(&c); err == nil {
		_, err = tx.ExecContext(ctx, "UPDATE "+table+" SET k=k+1 WHERE id=?", id)
	}
	if err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// session holds one connection until its first error.
func session(ctx context.Context, db *sql.DB, tables, size int, pause time.Duration) {
	logged.take()
	conn, err := db.Conn(ctx)
	if err != nil {
		failed(err)
		return
	}
	defer conn.Close()
	say("CONNECTED")
	for {
		if err := transaction(ctx, conn, tables, size); err != nil {
			failed(err)
			return
		}
		say("OK")
		time.Sleep(pause)
	}
}

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-stop; os.Exit(0) }()
	rand.Seed(time.Now().UnixNano() + int64(os.Getpid()))
	mysql.SetLogger(logged)
	say("VERSION go-sql-driver/mysql %s", driverVersion) // Go itself: golang-go's version
	db, err := sql.Open("mysql", config().FormatDSN())
	if err != nil {
		refuse(err.Error())
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(0) // closing the held Conn closes the connection
	tables, _ := envInt("LAB_TABLES")
	size, _ := envInt("LAB_TABLE_SIZE")
	if tables < 1 || size < 1 {
		refuse("LAB_TABLES and LAB_TABLE_SIZE must be positive")
	}
	pause, again := millis("LAB_PAUSE_MS"), millis("LAB_RECONNECT_PAUSE_MS")
	for ctx := context.Background(); ; time.Sleep(again) {
		session(ctx, db, tables, size, pause)
	}
}
