// kubefaas instance shim for Go scripts, compiled into the script's
// program. It reports readiness, then serves calls from the controller
// until the connection closes. Frames, both directions: 4-byte big-endian
// header length, 4-byte big-endian body length, header JSON, body bytes.
// The body is the raw payload, so any bytes travel unchanged.
package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
)

// Data is the data object a script receives and changes in place.
type Data struct {
	// Payload is nil for a null payload.
	Payload   []byte
	Variables map[string]string
	Meta      map[string]string
	Flow      map[string]any
	Logs      []string
	// HTTP is set for a raw HTTP call: method, path, query, headers.
	HTTP map[string]any
	// Response is the reply to a raw HTTP call: "status" and "headers".
	Response map[string]any
}

type callHeader struct {
	ID         uint64            `json:"id"`
	HasPayload bool              `json:"has_payload"`
	Variables  map[string]string `json:"variables"`
	Meta       map[string]string `json:"meta"`
	Flow       map[string]any    `json:"flow"`
	HTTP       map[string]any    `json:"http,omitempty"`
}

type failure struct {
	Type    string `json:"type"`
	Message string `json:"message"`
}

type replyHeader struct {
	ID         uint64            `json:"id"`
	OK         bool              `json:"ok"`
	HasPayload bool              `json:"has_payload"`
	Variables  map[string]string `json:"variables,omitempty"`
	Meta       map[string]string `json:"meta,omitempty"`
	Flow       map[string]any    `json:"flow,omitempty"`
	Logs       []string          `json:"logs,omitempty"`
	Response   map[string]any    `json:"response,omitempty"`
	Error      *failure          `json:"error,omitempty"`
	Ready      bool              `json:"ready,omitempty"`
	Pid        int               `json:"pid,omitempty"`
}

var writeLock sync.Mutex

func writeFrame(out io.Writer, header any, body []byte) {
	encoded, err := json.Marshal(header)
	if err != nil {
		fmt.Fprintln(os.Stderr, "encoding a reply failed:", err)
		os.Exit(1)
	}
	frame := make([]byte, 8, 8+len(encoded)+len(body))
	binary.BigEndian.PutUint32(frame[0:4], uint32(len(encoded)))
	binary.BigEndian.PutUint32(frame[4:8], uint32(len(body)))
	frame = append(append(frame, encoded...), body...)
	writeLock.Lock()
	defer writeLock.Unlock()
	if _, err := out.Write(frame); err != nil {
		os.Exit(0)
	}
}

func readFrame(in io.Reader) (*callHeader, []byte, bool) {
	prefix := make([]byte, 8)
	if _, err := io.ReadFull(in, prefix); err != nil {
		return nil, nil, false
	}
	encoded := make([]byte, binary.BigEndian.Uint32(prefix[0:4]))
	body := make([]byte, binary.BigEndian.Uint32(prefix[4:8]))
	if _, err := io.ReadFull(in, encoded); err != nil {
		return nil, nil, false
	}
	if _, err := io.ReadFull(in, body); err != nil {
		return nil, nil, false
	}
	var header callHeader
	if err := json.Unmarshal(encoded, &header); err != nil {
		fmt.Fprintln(os.Stderr, "invalid call header:", err)
		os.Exit(1)
	}
	return &header, body, true
}

func serveCall(out io.Writer, header *callHeader, body []byte) {
	data := &Data{Variables: header.Variables, Meta: header.Meta, Flow: header.Flow, HTTP: header.HTTP}
	if header.HasPayload {
		data.Payload = body
	}
	if data.Variables == nil {
		data.Variables = map[string]string{}
	}
	if data.Meta == nil {
		data.Meta = map[string]string{}
	}
	if data.Flow == nil {
		data.Flow = map[string]any{}
	}
	var failed *failure
	func() {
		defer func() {
			if recovered := recover(); recovered != nil {
				fmt.Fprintln(os.Stderr, "panic:", recovered)
				failed = &failure{Type: "panic", Message: fmt.Sprint(recovered)}
			}
		}()
		if err := handle(data); err != nil {
			fmt.Fprintln(os.Stderr, "error:", err)
			failed = &failure{Type: "error", Message: err.Error()}
		}
	}()
	if failed != nil {
		writeFrame(out, replyHeader{ID: header.ID, Error: failed}, nil)
		return
	}
	reply := replyHeader{
		ID:         header.ID,
		OK:         true,
		HasPayload: data.Payload != nil,
		Variables:  data.Variables,
		Meta:       data.Meta,
		Flow:       data.Flow,
		Logs:       data.Logs,
		Response:   data.Response,
	}
	writeFrame(out, reply, data.Payload)
}

func connect() net.Conn {
	if fd := os.Getenv("KUBEFAAS_FD"); fd != "" {
		number, _ := strconv.Atoi(fd)
		connection, err := net.FileConn(os.NewFile(uintptr(number), "kubefaas"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "opening the controller connection failed:", err)
			os.Exit(1)
		}
		return connection
	}
	listener, err := net.Listen("tcp", os.Getenv("KUBEFAAS_LISTEN"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "listening failed:", err)
		os.Exit(1)
	}
	connection, err := listener.Accept()
	if err != nil {
		fmt.Fprintln(os.Stderr, "accepting the controller connection failed:", err)
		os.Exit(1)
	}
	listener.Close()
	return connection
}

func main() {
	connection := connect()
	concurrent, _ := strconv.Atoi(os.Getenv("KUBEFAAS_CONCURRENCY"))
	writeFrame(connection, replyHeader{Ready: true, Pid: os.Getpid()}, nil)
	for {
		header, body, ok := readFrame(connection)
		if !ok {
			return
		}
		if concurrent > 1 {
			go serveCall(connection, header, body)
		} else {
			serveCall(connection, header, body)
		}
	}
}
