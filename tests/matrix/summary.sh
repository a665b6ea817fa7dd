#!/bin/bash
# tests/matrix/summary.sh RESULTS_DIR — the table of a matrix.sh run.
# Exit 0 when, for every target, the build worked, every guarded scenario
# passed, the guarded and auto differential transcripts equal the plain one,
# and auto mode chose guard below GnuTLS 3.8.11 and keyupdate from 3.8.11 on.
set -u
res=$1
bad=0
ver_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }
get() { sed -n "s/^$2=//p" "$1/info" 2>/dev/null | head -n1; }

if [ -f "$res/targets" ]; then order=$(cat "$res/targets")
else order=$(cd "$res" && for d in */; do echo "${d%/}"; done); fi
for t in $order; do
	d=$res/$t
	[ -f "$d/target" ] || { echo "=== $t: not run"; bad=1; continue; }
	echo "=== $t: $(get "$d" os)"
	rc=$(cat "$d/rc" 2>/dev/null || echo none)
	if [ ! -s "$d/runs.tsv" ]; then
		echo "    no results (rc=$rc)"; bad=1; continue
	fi
	v=$(get "$d" gnutls_runtime)
	echo "    GnuTLS runtime $v, package $(get "$d" gnutls_package), gcc $(get "$d" gcc), build $(get "$d" build)"
	echo "    (a) guard mode (REKEYGUARD_MODE=guard):"
	awk -F'\t' '$1 == "guard" { n[$2]++; if ($4 == "PASS") p[$2]++; else r[$2] = r[$2] " " $5; o[$2] = o[$2] ? o[$2] : ++k
			if ($7 != "-" && (!($2 in lo) || $7 + 0 < lo[$2])) lo[$2] = $7 + 0 }
		END { for (s in n) printf "%d\t        %-32s %d/%d pass  (key updates per run >= %s)%s\n", o[s], s, p[s], n[s], (s in lo) ? lo[s] : "?", r[s] ? "  fails:" r[s] : "" }' \
		"$d/runs.tsv" | sort -n | cut -f2-
	gfail=$(awk -F'\t' '$1 == "guard" && $4 != "PASS"' "$d/runs.tsv" | wc -l)
	[ "$gfail" = 0 ] || bad=1
	for m in guard auto; do
		tr=$(get "$d" "diff_${m}_transcript"); mode=$(get "$d" "diff_${m}_mode")
		printf '        rg-differential %-5s transcript %s (plain exit %s, preloaded exit %s, %s cases, %s lines), shim_active_mode=%s\n' \
			"$m:" "$tr" "$(get "$d" diff_plain_rc)" "$(get "$d" "diff_${m}_rc")" \
			"$(get "$d" diff_cases)" "$(get "$d" diff_lines)" "$mode"
		[ "$tr" = identical ] && [ "$(get "$d" diff_plain_rc)" = 0 ] && [ "$(get "$d" "diff_${m}_rc")" = 0 ] || bad=1
	done
	want=guard; ver_ge "$v" 3.8.11 && want=keyupdate
	amode=$(get "$d" diff_auto_mode)
	verdict=ok; [ "$amode" = "$want" ] || { verdict="WRONG (expected $want)"; bad=1; }
	echo "    (b) auto mode: rekeyguard_active_mode()=$amode -> $verdict"
	n=$(get "$d" auto_notice); echo "        notice: ${n:-(none)}"
	awk -F'\t' '$1 == "auto" { printf "        auto-mode %s: %s %s\n", $2, $4, $5 == "-" ? "" : $5 }' "$d/runs.tsv"
	echo "    (c) plain (no shim) failure rate:"
	awk -F'\t' '$1 == "plain" { n[$2]++; if ($4 != "PASS") { f[$2]++; r[$2 SUBSEP $5]++ }
			else if ($7 != "-" && (!($2 in lo) || $7 + 0 < lo[$2])) lo[$2] = $7 + 0
			o[$2] = o[$2] ? o[$2] : ++k }
		END { for (s in n) { why = ""; for (x in r) { split(x, a, SUBSEP); if (a[1] == s) why = why " " a[2] "x" r[x] }
		      printf "%d\t        %-32s %d/%d fail%s%s\n", o[s], s, f[s], n[s], why ? "  (" substr(why, 2) ")" : "",
		             (s in lo) ? "  passing runs: key updates >= " lo[s] : "" } }' \
		"$d/runs.tsv" | sort -n | cut -f2-
done
exit $bad
