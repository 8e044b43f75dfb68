package mqttapi

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
)

// Limits of the chunked transfer.
const (
	DefaultChunkSize = 64 << 10
	MinChunkSize     = 1 << 10
	MaxChunkSize     = 1 << 20
	MaxArchiveSize   = 4 << 30 // 4 GiB
	MaxChunkHeader   = 4 << 10
)

// Plan fixes how one archive is cut into chunks. Both sides derive the
// same chunk boundaries from it.
type Plan struct {
	Transfer  string // Archive.TransferID()
	Digest    string // sha256:<hex> of the whole archive
	Size      int64  // archive bytes
	ChunkSize int    // every chunk but the last has this size
}

// NewPlan checks the figures of a transfer; chunkSize 0 means
// DefaultChunkSize. The transfer id is derived from the digest.
func NewPlan(digest string, size int64, chunkSize int) (Plan, error) {
	if chunkSize == 0 {
		chunkSize = DefaultChunkSize
	}
	p := Plan{Digest: digest, Size: size, ChunkSize: chunkSize}
	p.Transfer = Archive{Digest: digest}.TransferID()
	return p, p.Validate()
}

// Validate checks the plan's figures.
func (p Plan) Validate() error {
	if err := ValidateID(p.Transfer); err != nil {
		return fmt.Errorf("mqttapi: transfer id: %w", err)
	}
	if err := ValidateDigest(p.Digest); err != nil {
		return fmt.Errorf("mqttapi: transfer %s: %w", p.Transfer, err)
	}
	if p.Size <= 0 || p.Size > MaxArchiveSize {
		return fmt.Errorf("mqttapi: transfer %s: size %d out of (0, %d]: %w", p.Transfer, p.Size, int64(MaxArchiveSize), ErrInvalid)
	}
	if p.ChunkSize < MinChunkSize || p.ChunkSize > MaxChunkSize {
		return fmt.Errorf("mqttapi: transfer %s: chunk size %d out of [%d, %d]: %w", p.Transfer, p.ChunkSize, MinChunkSize, MaxChunkSize, ErrInvalid)
	}
	return nil
}

// Count is the number of chunks; 0 for a plan without size or chunk size.
func (p Plan) Count() int {
	if p.Size <= 0 || p.ChunkSize <= 0 {
		return 0
	}
	return int((p.Size + int64(p.ChunkSize) - 1) / int64(p.ChunkSize))
}

// Bounds returns the offset and length of chunk i.
func (p Plan) Bounds(i int) (off int64, n int) {
	off = int64(i) * int64(p.ChunkSize)
	n = p.ChunkSize
	if rest := p.Size - off; rest < int64(n) {
		n = int(rest)
	}
	return off, n
}

// ChunkHeader is the JSON head of a chunk message.
type ChunkHeader struct {
	V         int    `json:"v"`
	Transfer  string `json:"transfer"`
	Digest    string `json:"digest"` // of the whole archive
	Size      int64  `json:"size"`   // of the whole archive
	ChunkSize int    `json:"chunk_size"`
	Count     int    `json:"count"`
	Index     int    `json:"index"`
	Offset    int64  `json:"offset"`
	Len       int    `json:"len"`
	SHA256    string `json:"sha256"` // hex sha256 of this chunk's bytes
}

// Plan returns the plan the header belongs to.
func (h ChunkHeader) Plan() Plan {
	return Plan{Transfer: h.Transfer, Digest: h.Digest, Size: h.Size, ChunkSize: h.ChunkSize}
}

// Chunk is one piece of an archive. On the wire it is its header as compact
// JSON, one '\n', and then the raw bytes: no base64, so the transfer costs
// the archive size plus about 300 bytes per chunk.
type Chunk struct {
	ChunkHeader
	Data []byte
}

// NewChunk builds chunk i of plan p from data, which must be exactly that
// chunk's bytes.
func (p Plan) NewChunk(i int, data []byte) (Chunk, error) {
	if err := p.Validate(); err != nil {
		return Chunk{}, err
	}
	if i < 0 || i >= p.Count() {
		return Chunk{}, fmt.Errorf("mqttapi: transfer %s: chunk %d of %d: %w", p.Transfer, i, p.Count(), ErrInvalid)
	}
	off, n := p.Bounds(i)
	if len(data) != n {
		return Chunk{}, fmt.Errorf("mqttapi: transfer %s: chunk %d has %d bytes, want %d: %w", p.Transfer, i, len(data), n, ErrInvalid)
	}
	sum := sha256.Sum256(data)
	return Chunk{ChunkHeader: ChunkHeader{
		V: Version, Transfer: p.Transfer, Digest: p.Digest, Size: p.Size, ChunkSize: p.ChunkSize,
		Count: p.Count(), Index: i, Offset: off, Len: n, SHA256: hex.EncodeToString(sum[:]),
	}, Data: data}, nil
}

// Marshal encodes the chunk for the wire.
func (c Chunk) Marshal() ([]byte, error) {
	c.V = Version
	h, err := json.Marshal(c.ChunkHeader)
	if err != nil {
		return nil, fmt.Errorf("mqttapi: chunk: %w", err)
	}
	out := make([]byte, 0, len(h)+1+len(c.Data))
	out = append(append(append(out, h...), '\n'), c.Data...)
	return out, nil
}

// DecodeChunk parses a chunk message and checks it: header size, version,
// plan figures, that index, offset, count and length agree with the plan,
// and the chunk's sha256 (ErrChunkCorrupt). The returned Data aliases raw.
func DecodeChunk(raw []byte) (*Chunk, error) {
	if len(raw) > MaxChunkHeader+1+MaxChunkSize {
		return nil, fmt.Errorf("mqttapi: chunk of %d bytes: %w", len(raw), ErrOversized)
	}
	nl := bytes.IndexByte(raw, '\n')
	if nl < 0 {
		return nil, fmt.Errorf("mqttapi: chunk: no header line: %w", ErrUnparsable)
	}
	var h ChunkHeader
	if err := decode("chunk header", raw[:nl], MaxChunkHeader, &h, true); err != nil {
		return nil, err
	}
	p := h.Plan()
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if want := (Archive{Digest: h.Digest}).TransferID(); h.Transfer != want {
		return nil, fmt.Errorf("mqttapi: chunk: transfer %q, digest says %q: %w", h.Transfer, want, ErrInvalid)
	}
	if h.Count != p.Count() || h.Index < 0 || h.Index >= h.Count {
		return nil, fmt.Errorf("mqttapi: chunk %d of %d, plan has %d: %w", h.Index, h.Count, p.Count(), ErrInvalid)
	}
	off, n := p.Bounds(h.Index)
	if h.Offset != off || h.Len != n {
		return nil, fmt.Errorf("mqttapi: chunk %d at %d+%d, plan says %d+%d: %w", h.Index, h.Offset, h.Len, off, n, ErrInvalid)
	}
	data := raw[nl+1:]
	if len(data) != h.Len {
		return nil, fmt.Errorf("mqttapi: chunk %d carries %d bytes, header says %d: %w", h.Index, len(data), h.Len, ErrChunkCorrupt)
	}
	sum := sha256.Sum256(data)
	if hex.EncodeToString(sum[:]) != h.SHA256 {
		return nil, fmt.Errorf("mqttapi: chunk %d of transfer %s: sha256 mismatch: %w", h.Index, h.Transfer, ErrChunkCorrupt)
	}
	return &Chunk{ChunkHeader: h, Data: data}, nil
}

// Have is the drone's retained report of the chunks of a transfer it holds
// and has checked. The ground sends only what is missing, so a transfer cut
// anywhere resumes where it stopped.
type Have struct {
	V         int    `json:"v"`
	Drone     string `json:"drone"`
	Transfer  string `json:"transfer"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	ChunkSize int    `json:"chunk_size"`
	Count     int    `json:"count"`
	// Ranges are the chunk indexes held, as sorted, disjoint, half-open
	// [start, end) pairs.
	Ranges   [][2]int  `json:"ranges"`
	Bytes    int64     `json:"bytes"`              // bytes held
	Complete bool      `json:"complete,omitempty"` // every chunk held and the whole digest checked
	Error    string    `json:"error,omitempty"`    // e.g. whole-digest mismatch: the drone dropped everything
	At       time.Time `json:"at"`
}

// Plan returns the plan the report belongs to.
func (h Have) Plan() Plan {
	return Plan{Transfer: h.Transfer, Digest: h.Digest, Size: h.Size, ChunkSize: h.ChunkSize}
}

// Set returns the chunks held as a ChunkSet.
func (h Have) Set() (*ChunkSet, error) {
	s := NewChunkSet(h.Count)
	if err := s.SetRanges(h.Ranges); err != nil {
		return nil, err
	}
	return s, nil
}

// Marshal encodes the report, setting V.
func (h Have) Marshal() ([]byte, error) {
	h.V = Version
	if h.Ranges == nil {
		h.Ranges = [][2]int{}
	}
	return marshal("have", h, MaxStateSize)
}

// DecodeHave parses and checks a have report. Unknown fields are ignored.
func DecodeHave(raw []byte) (*Have, error) {
	var h Have
	if err := decode("have", raw, MaxStateSize, &h, false); err != nil {
		return nil, err
	}
	if err := ValidateID(h.Drone); err != nil {
		return nil, fmt.Errorf("mqttapi: have: drone: %w", err)
	}
	p := h.Plan()
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if h.Count != p.Count() {
		return nil, fmt.Errorf("mqttapi: have: count %d, plan has %d: %w", h.Count, p.Count(), ErrInvalid)
	}
	if _, err := h.Set(); err != nil {
		return nil, err
	}
	return &h, nil
}

// ChunkSet records which chunks of a transfer are held.
type ChunkSet struct {
	bits []uint64
	n    int
	held int
}

// NewChunkSet returns an empty set of count chunks.
func NewChunkSet(count int) *ChunkSet {
	if count < 0 {
		count = 0
	}
	return &ChunkSet{bits: make([]uint64, (count+63)/64), n: count}
}

// Count is the number of chunks of the transfer.
func (s *ChunkSet) Count() int { return s.n }

// Held is the number of chunks held.
func (s *ChunkSet) Held() int { return s.held }

// Complete reports whether every chunk is held.
func (s *ChunkSet) Complete() bool { return s.held == s.n }

// Has reports whether chunk i is held.
func (s *ChunkSet) Has(i int) bool {
	return i >= 0 && i < s.n && s.bits[i/64]&(1<<(i%64)) != 0
}

// Add marks chunk i held and reports whether it was new.
func (s *ChunkSet) Add(i int) bool {
	if i < 0 || i >= s.n || s.Has(i) {
		return false
	}
	s.bits[i/64] |= 1 << (i % 64)
	s.held++
	return true
}

// Ranges returns the held chunks as sorted half-open [start, end) pairs.
func (s *ChunkSet) Ranges() [][2]int {
	r := [][2]int{}
	for i := 0; i < s.n; {
		if !s.Has(i) {
			i++
			continue
		}
		j := i
		for j < s.n && s.Has(j) {
			j++
		}
		r = append(r, [2]int{i, j})
		i = j
	}
	return r
}

// SetRanges replaces the set with ranges, which must be sorted, disjoint
// and within the count.
func (s *ChunkSet) SetRanges(ranges [][2]int) error {
	clear(s.bits)
	s.held = 0
	prev := 0
	for _, r := range ranges {
		if r[0] < prev || r[1] <= r[0] || r[1] > s.n {
			return fmt.Errorf("mqttapi: chunk range [%d,%d) of %d: not sorted, disjoint and in bounds: %w", r[0], r[1], s.n, ErrInvalid)
		}
		for i := r[0]; i < r[1]; i++ {
			s.Add(i)
		}
		prev = r[1]
	}
	return nil
}

// Missing returns the indexes not held, in order.
func (s *ChunkSet) Missing() []int {
	m := make([]int, 0, s.n-s.held)
	for i := 0; i < s.n; i++ {
		if !s.Has(i) {
			m = append(m, i)
		}
	}
	return m
}
