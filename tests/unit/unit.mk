# tests/unit/unit.mk — unit tests of the library's internals (queue,
# record header, errno mirror, buffer cache, lookup cache), compiled together with the
# shim's own files rather than preloaded. Included by the top Makefile.
#
#   make check-unit     build and run tests/unit/check_unit (a second)

UNIT_SHIM_SRCS = $(addprefix shim/,buffers.c outbound.c app-transport.c locks.c config.c binding.c registry.c status.c)

tests/unit/check_unit: tests/unit/check_unit.c $(UNIT_SHIM_SRCS) $(SHIM_HDRS)
	$(CC) $(TEST_CFLAGS) -Ishim -o $@ tests/unit/check_unit.c $(UNIT_SHIM_SRCS) $(CHECK_LIBS) -ldl

# The same with the debug lock checks (as in the ASan library): misuse aborts.
tests/unit/check_unit_debug: tests/unit/check_unit.c $(UNIT_SHIM_SRCS) $(SHIM_HDRS)
	$(CC) $(TEST_CFLAGS) -DREKEYGUARD_DEBUG -Ishim -o $@ tests/unit/check_unit.c $(UNIT_SHIM_SRCS) $(CHECK_LIBS) -ldl

.PHONY: check-unit
check-unit: tests/unit/check_unit tests/unit/check_unit_debug
	cd tests/unit && ./check_unit && ./check_unit_debug
