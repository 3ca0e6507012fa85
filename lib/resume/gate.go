package resume

import (
	"errors"
	"sync"
)

// errAborted is what one side of the pipeline sees when the other stopped
// it.
var errAborted = errors.New("resume aborted")

// gate is what the two sides of the pipeline share: the reader of the
// stream and the feeder of QEMU's incoming migration. Either side may
// abort (the first cause is kept); the reader finishes after END verified
// and everything is written. The device state spool counts its bytes under
// the same lock, so one condition variable wakes every waiter.
type gate struct {
	mu          sync.Mutex
	cond        *sync.Cond
	quit        chan struct{} // closed by abort
	quitOnce    sync.Once
	ended       bool  // END verified and everything written
	devEnded    bool  // the device state is complete (early start: at the first other record)
	err         error // why the stream was abandoned (the first cause)
	errFromFeed bool  // err came from the feeder
}

func (g *gate) init() {
	g.cond = sync.NewCond(&g.mu)
	g.quit = make(chan struct{})
}

// abort stops both sides: the reader at its next record, the feeder at its
// next step. fromFeed says which side the cause came from.
func (g *gate) abort(err error, fromFeed bool) {
	g.mu.Lock()
	if g.err == nil {
		g.err, g.errFromFeed = err, fromFeed
	}
	g.cond.Broadcast()
	g.mu.Unlock()
	g.quitOnce.Do(func() { close(g.quit) })
}

// cause is the first error either side hit, and whether the feeder (QEMU's
// side) hit it.
func (g *gate) cause() (error, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err, g.errFromFeed
}

// failure is why the pipeline stopped, for the side that did not stop it.
func (g *gate) failure() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil {
		return g.err
	}
	return errAborted
}

// end marks END verified and everything written.
func (g *gate) end() {
	g.mu.Lock()
	g.ended = true
	g.cond.Broadcast()
	g.mu.Unlock()
}

// waitEnd blocks until end (nil) or abort (errAborted).
func (g *gate) waitEnd() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	for !g.ended && g.err == nil {
		g.cond.Wait()
	}
	if g.err != nil {
		return errAborted
	}
	return nil
}

// endDev marks the device state complete: the feeder's tail ends there
// instead of at END (early start).
func (g *gate) endDev() {
	g.mu.Lock()
	g.devEnded = true
	g.cond.Broadcast()
	g.mu.Unlock()
}
