# tests/package/package.mk — the Debian package (included by the top
# Makefile).
#
#   make deb            build it from the working tree (a copy in
#                       build/deb/src, so the tree stays as it is):
#                       build/deb/rekeyguard_VERSION_ARCH.deb
#   make deb-lint       make deb, then lintian (errors and warnings fail;
#                       the overrides in debian/ say why each is there)
#   make check-package  deb-lint, then install it into clean bookworm and
#                       trixie chroots, run rekeyguard-selftest there, purge
#                       it and check nothing is left (tests/package/package-test.sh;
#                       PACKAGE_SUITES="bookworm trixie" by default)

PACKAGE_SUITES ?= bookworm trixie
.PHONY: deb deb-lint check-package

deb:
	@tests/ensure-deps.sh debhelper dpkg-dev build-essential scdoc libgnutls28-dev pkg-config git
	rm -rf build/deb
	mkdir -p build/deb/src
	git ls-files -co --exclude-standard | tar -cf - -T - | tar -xf - -C build/deb/src
	cd build/deb/src && dpkg-buildpackage -us -uc -b > ../build.log 2>&1 || \
	    { tail -n 40 ../build.log; exit 1; }
	@ls build/deb/*.deb

deb-lint: deb
	@tests/ensure-deps.sh lintian
	lintian --info --display-info --fail-on error,warning build/deb/*.changes

check-package: deb-lint
	tests/package/package-test.sh $(PACKAGE_SUITES)
