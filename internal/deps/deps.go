// Package deps pins the modules that the packages under construction import,
// so that go.mod and go.sum stay complete while they are written in parallel.
// It is removed once every module here is imported by real code.
package deps

import (
	_ "github.com/BurntSushi/toml"
	_ "github.com/docker/docker/client"
	_ "github.com/docker/docker/api/types/container"
	_ "github.com/docker/docker/api/types/image"
	_ "github.com/eclipse/paho.mqtt.golang"
	_ "github.com/google/go-containerregistry/pkg/registry"
	_ "github.com/google/go-containerregistry/pkg/v1/mutate"
	_ "github.com/google/go-containerregistry/pkg/v1/tarball"
	_ "github.com/google/go-containerregistry/pkg/v1/remote"
	_ "github.com/google/go-containerregistry/pkg/v1/empty"
	_ "github.com/google/go-containerregistry/pkg/name"
	_ "github.com/mochi-mqtt/server/v2"
	_ "github.com/mochi-mqtt/server/v2/hooks/auth"
	_ "github.com/mochi-mqtt/server/v2/listeners"
	_ "github.com/schollz/progressbar/v3"
	_ "golang.org/x/sys/unix"
	_ "gonum.org/v1/plot"
	_ "gonum.org/v1/plot/plotter"
	_ "gonum.org/v1/plot/vg"
	_ "periph.io/x/conn/v3/i2c"
	_ "periph.io/x/conn/v3/i2c/i2creg"
	_ "periph.io/x/conn/v3/i2c/i2ctest"
	_ "periph.io/x/devices/v3/bmxx80"
	_ "periph.io/x/devices/v3/pca9685"
	_ "periph.io/x/host/v3"
)
