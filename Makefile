# Builds tokio-bridge in release mode and installs it like a C library.
#
#   make install PREFIX=/opt/tb     build if needed, then install under $(DESTDIR)$(PREFIX)
#   make uninstall PREFIX=/opt/tb   remove exactly what install put there
#   make                            only build, into target/install
#   make docs                       regenerate docs/api.md from the header's doc comments
#
# Installed, with LIBDIR = $(PREFIX)/lib and INCLUDEDIR = $(PREFIX)/include by default:
#   INCLUDEDIR/tokio_bridge.h
#   LIBDIR/libtokio_bridge.so.X.Y.Z (soname libtokio_bridge.so.X), .so.X -> .so.X.Y.Z, .so -> .so.X
#   LIBDIR/libtokio_bridge.a
#   LIBDIR/pkgconfig/tokio_bridge.pc         shared: pkg-config --cflags --libs tokio_bridge
#   LIBDIR/pkgconfig/tokio_bridge-static.pc  static: pkg-config --static --cflags --libs tokio_bridge-static
#   LIBDIR/cmake/tokio_bridge/tokio_bridge-config.cmake (+ -config-version.cmake): find_package(tokio_bridge)
#
# The version comes from Cargo.toml only; X.Y.Z is its numeric part.

PREFIX     ?= /usr/local
LIBDIR     ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
CARGO      ?= cargo
PYTHON     ?= python3
INSTALL    ?= install

VERSION := $(shell sed -n 's/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n 1)
NUMERIC := $(firstword $(subst -, ,$(subst +, ,$(VERSION))))
MAJOR   := $(word 1,$(subst ., ,$(NUMERIC)))
MINOR   := $(word 2,$(subst ., ,$(NUMERIC)))
ifneq ($(words $(subst ., ,$(NUMERIC))),3)
$(error cannot read a version X.Y.Z from Cargo.toml (got "$(VERSION)"))
endif

SONAME   := libtokio_bridge.so.$(MAJOR)
REALNAME := libtokio_bridge.so.$(NUMERIC)

# The installed library is built apart from target/debug and target/release, with the soname
# set at link time. The in-tree builds keep no soname: the tests and examples link to them by
# file name, and a soname would make those programs look for libtokio_bridge.so.X at run time.
TARGET_DIR := $(CURDIR)/target/install
OUT        := $(TARGET_DIR)/release
SOURCES    := Cargo.toml Cargo.lock build.rs cbindgen.toml $(shell find src -name '*.rs')

DEST_INC   := $(DESTDIR)$(INCLUDEDIR)
DEST_LIB   := $(DESTDIR)$(LIBDIR)
DEST_PC    := $(DEST_LIB)/pkgconfig
DEST_CMAKE := $(DEST_LIB)/cmake/tokio_bridge

# The C libraries a static link needs besides libtokio_bridge.a, as rustc reports them.
LIBS_PRIVATE = $(shell cat $(OUT)/native-static-libs.txt)
space := $() $()

# Fills a template from packaging/. The .pc files name libdir and includedir from ${prefix}
# when they lie below it; the CMake files find everything from their own location.
FILL = sed -e 's|@VERSION@|$(VERSION)|g' \
	-e 's|@NUMERIC_VERSION@|$(NUMERIC)|g' \
	-e 's|@MAJOR@|$(MAJOR)|g' \
	-e 's|@MINOR@|$(MINOR)|g' \
	-e 's|@SONAME@|$(SONAME)|g' \
	-e 's|@PREFIX@|$(PREFIX)|g' \
	-e 's|@LIBDIR@|$(patsubst $(PREFIX)/%,$${prefix}/%,$(LIBDIR))|g' \
	-e 's|@INCLUDEDIR@|$(patsubst $(PREFIX)/%,$${prefix}/%,$(INCLUDEDIR))|g' \
	-e 's|@LIBS_PRIVATE@|$(LIBS_PRIVATE)|g' \
	-e 's|@CMAKE_LIBS_PRIVATE@|$(subst $(space),;,$(strip $(LIBS_PRIVATE)))|g' \
	-e 's|@CMAKE_TO_INCLUDEDIR@|$(shell realpath -m --relative-to=$(LIBDIR)/cmake/tokio_bridge $(INCLUDEDIR))|g'

.PHONY: all install uninstall docs clean

all: $(OUT)/libtokio_bridge.so

# One rustc run makes the shared library, the static archive and the list of native libraries
# (--print native-static-libs). rustc writes the list only when it runs, so the crate is
# cleaned first (a few seconds; dependencies stay built) for cargo not to skip it.
$(OUT)/libtokio_bridge.so: $(SOURCES)
	CARGO_TARGET_DIR=$(TARGET_DIR) $(CARGO) clean --quiet --release --package tokio-bridge
	CARGO_TARGET_DIR=$(TARGET_DIR) $(CARGO) rustc --release --lib --crate-type cdylib,staticlib -- \
		-C link-arg=-Wl,-soname,$(SONAME) --print=native-static-libs=$(OUT)/native-static-libs.txt

install: $(OUT)/libtokio_bridge.so
	$(INSTALL) -d $(DEST_INC) $(DEST_PC) $(DEST_CMAKE)
	$(INSTALL) -m 644 include/tokio_bridge.h $(DEST_INC)/tokio_bridge.h
	$(INSTALL) -m 755 $(OUT)/libtokio_bridge.so $(DEST_LIB)/$(REALNAME)
	ln -sfn $(REALNAME) $(DEST_LIB)/$(SONAME)
	ln -sfn $(SONAME) $(DEST_LIB)/libtokio_bridge.so
	$(INSTALL) -m 644 $(OUT)/libtokio_bridge.a $(DEST_LIB)/libtokio_bridge.a
	$(FILL) -e 's|@NAME@|tokio_bridge|g' -e 's|@LIB@|-ltokio_bridge|g' \
		packaging/tokio_bridge.pc.in > $(DEST_PC)/tokio_bridge.pc
	$(FILL) -e 's|@NAME@|tokio_bridge-static|g' -e 's|@LIB@|-l:libtokio_bridge.a|g' \
		packaging/tokio_bridge.pc.in > $(DEST_PC)/tokio_bridge-static.pc
	$(FILL) packaging/tokio_bridge-config.cmake.in > $(DEST_CMAKE)/tokio_bridge-config.cmake
	$(FILL) packaging/tokio_bridge-config-version.cmake.in \
		> $(DEST_CMAKE)/tokio_bridge-config-version.cmake

uninstall:
	rm -f $(DEST_INC)/tokio_bridge.h \
		$(DEST_LIB)/$(REALNAME) $(DEST_LIB)/$(SONAME) $(DEST_LIB)/libtokio_bridge.so \
		$(DEST_LIB)/libtokio_bridge.a \
		$(DEST_PC)/tokio_bridge.pc $(DEST_PC)/tokio_bridge-static.pc \
		$(DEST_CMAKE)/tokio_bridge-config.cmake $(DEST_CMAKE)/tokio_bridge-config-version.cmake
	rmdir --ignore-fail-on-non-empty $(DEST_CMAKE)

docs:
	$(PYTHON) scripts/api_docs.py

clean:
	rm -rf $(TARGET_DIR)
