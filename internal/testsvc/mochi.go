package testsvc

import (
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
)

// CloseBroker closes an in-process mochi broker and waits for it at most
// two seconds. mochi v2.7.9's Server.Close can deadlock when a client
// (re)connects while it closes: Clients.GetByListener takes the clients'
// read lock twice (it calls Len under RLock) while Clients.Delete, from the
// connecting client, waits for the write lock, so the second RLock never
// comes. A test must not hang on that: past the bound the broker is left
// behind and ends with the test binary.
func CloseBroker(srv *mochi.Server) {
	done := make(chan struct{})
	go func() {
		srv.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
	}
}
