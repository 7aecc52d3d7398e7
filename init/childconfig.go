package main

import (
	"errors"
	"io/fs"

	"nest/config"
)

// ownConfig adds what a container's own config says to what its parent's
// config says inline: its /etc/nest/nest.toml (inside its root; for a
// user container the etc entry of its state, which its user may edit) and
// containers.d may add services and children. A name both declare is an
// error, and then the container runs what its parent declared only. Keys
// that describe a machine (hostname, modules, mounts, console) belong to
// the parent's view of the container and are ignored with a note.
func ownConfig(c *config.Container, logf func(string, ...any)) {
	own, err := loadOwnConfig()
	if err != nil {
		logf("own config: %v (running what the parent declares)", err)
		return
	}
	if own.Hostname != "" || len(own.Modules) > 0 || len(own.Mounts) > 0 {
		logf("own config %s: hostname, modules and mounts of a container are its parent's to say: ignored", own.Source)
	}
	names := map[string]bool{}
	for _, s := range c.Services {
		names[s.Name] = true
	}
	for _, k := range c.Containers {
		names[k.Name] = true
	}
	for _, s := range own.Services {
		if names[s.Name] {
			logf("own config %s: service %q: the parent already declares a unit of that name (running what the parent declares)", own.Source, s.Name)
			return
		}
	}
	for _, k := range own.Containers {
		if names[k.Name] {
			logf("own config %s: container %q: the parent already declares a unit of that name (running what the parent declares)", own.Source, k.Name)
			return
		}
	}
	c.Services = append(c.Services, own.Services...)
	c.Containers = append(c.Containers, own.Containers...)
	if n := len(own.Services) + len(own.Containers); n > 0 {
		logf("own config %s: %d units", own.Source, n)
	}
}

// loadOwnConfig reads a container's own /etc/nest/nest.toml and the
// containers.d beside it; without the file, containers.d alone.
func loadOwnConfig() (*config.Config, error) {
	own, err := loadConfig(config.DefaultPath, false)
	if errors.Is(err, fs.ErrNotExist) {
		dir := config.DirFor(config.DefaultPath)
		own = &config.Config{Source: dir}
		err = config.LoadDir(own, dir)
	}
	return own, err
}
