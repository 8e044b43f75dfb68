package handoff

import (
	"errors"
	"fmt"
	"sort"
	"sync"
)

// ErrNoMigration: the registry knows no chain of migrations between two
// schema versions.
var ErrNoMigration = errors.New("handoff: no migration path between the schema versions")

// MigrateFunc converts a state of one schema version into the next: it
// appends the converted state to dst (which may be nil) and returns it. It
// must not keep or modify src, and must not return a slice aliasing src.
type MigrateFunc func(src, dst []byte) ([]byte, error)

// Registry holds migrations between state schema versions. The controller
// registers them (usually at start-up); handoff finds a chain through them
// and never interprets the bytes. It is safe for concurrent use.
type Registry struct {
	mu    sync.RWMutex
	edges map[int]map[int]MigrateFunc
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{edges: map[int]map[int]MigrateFunc{}} }

// Register adds the migration from one schema version to another (usually
// to the next one, and sometimes back, so that a rollback to an older program
// is a handoff too). A nil fn, from == to, or a second migration for the same
// pair is a programming error and panics.
func (r *Registry) Register(from, to int, fn MigrateFunc) {
	if fn == nil || from == to {
		panic(fmt.Sprintf("handoff: Register(%d, %d): need a function between two distinct versions", from, to))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.edges == nil {
		r.edges = map[int]map[int]MigrateFunc{}
	}
	m := r.edges[from]
	if m == nil {
		m = map[int]MigrateFunc{}
		r.edges[from] = m
	}
	if _, dup := m[to]; dup {
		panic(fmt.Sprintf("handoff: Register(%d, %d): registered twice", from, to))
	}
	m[to] = fn
}

// Path returns the shortest chain of schema versions from from to to, both
// included ([from] when they are equal), or an error wrapping ErrNoMigration.
// Among chains of the same length it prefers lower intermediate versions, so
// the result is deterministic.
func (r *Registry) Path(from, to int) ([]int, error) {
	if from == to {
		return []int{from}, nil
	}
	if r != nil {
		r.mu.RLock()
		defer r.mu.RUnlock()
		prev := map[int]int{from: from}
		queue := []int{from}
		for len(queue) > 0 {
			v := queue[0]
			queue = queue[1:]
			next := make([]int, 0, len(r.edges[v]))
			for w := range r.edges[v] {
				next = append(next, w)
			}
			sort.Ints(next)
			for _, w := range next {
				if _, seen := prev[w]; seen {
					continue
				}
				prev[w] = v
				if w == to {
					var path []int
					for x := to; x != from; x = prev[x] {
						path = append(path, x)
					}
					path = append(path, from)
					for i, j := 0, len(path)-1; i < j; i, j = i+1, j-1 {
						path[i], path[j] = path[j], path[i]
					}
					return path, nil
				}
				queue = append(queue, w)
			}
		}
	}
	return nil, fmt.Errorf("handoff: schema %d to %d: %w", from, to, ErrNoMigration)
}

// CanMigrate reports whether a state of schema from can be migrated to to
// (always true when they are equal).
func (r *Registry) CanMigrate(from, to int) bool {
	_, err := r.Path(from, to)
	return err == nil
}

// Migrate converts src from schema from to schema to along the shortest
// chain. The result never aliases src (with from == to it is a copy). An
// error names the failing step and wraps the migration's own error, or
// ErrNoMigration.
func (r *Registry) Migrate(src []byte, from, to int) ([]byte, error) {
	path, err := r.Path(from, to)
	if err != nil {
		return nil, err
	}
	if len(path) == 1 {
		return append([]byte(nil), src...), nil
	}
	cur := src
	for i := 0; i+1 < len(path); i++ {
		r.mu.RLock()
		fn := r.edges[path[i]][path[i+1]]
		r.mu.RUnlock()
		out, err := fn(cur, make([]byte, 0, len(cur)+len(cur)/4+64))
		if err != nil {
			return nil, fmt.Errorf("handoff: migrate schema %d to %d: %w", path[i], path[i+1], err)
		}
		cur = out
	}
	return cur, nil
}
