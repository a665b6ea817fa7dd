# chart.gp — the benchmark's chart (bench/results/latest.png).
#
# rg-bench writes the data and a settings file and runs:
#   gnuplot -e "load '<datadir>/vars.gp'" bench/chart.gp
# vars.gp defines datadir, output, ncat, barwidth, ntput, tput_title[],
# plain_ns, plain_p99, the y ranges (tput_ymax, latency_ymax,
# percall_ymax), subtitle and the xtics of the top panel.
#
# Top: throughput of every workload as a ratio to plain GnuTLS AES-128-GCM
# (configuration 2 = 1.0), one bar per configuration (median of per-round
# paired ratios, whiskers = interquartile range); a configuration that
# stalled or failed has no bar and a red word instead.
# Bottom left: return-path latency of workload c (p50 and p99, log scale).
# Bottom right: cost per GnuTLS call of workload g, with the 100 ns budget.

set terminal pngcairo size 1500,1000 font 'sans,11' noenhanced
set output output

array color[5] = ['#9e9e9e', '#2e7d32', '#ef6c00', '#6a1b9a', '#1565c0']

set multiplot title "rekeyguard benchmark — ".subtitle font 'sans,12'

# ---- top: throughput ratios ------------------------------------------------
set origin 0, 0.42
set size 1, 0.55
set title "Throughput relative to plain GnuTLS AES-128-GCM (config 2 = 1.0), higher is better; whiskers: interquartile range over rounds" font 'sans,12'
set style fill solid 0.85 border rgb '#404040'
set xrange [-0.6:ncat - 0.4]
set yrange [0:tput_ymax]
set ytics auto
set grid ytics lc rgb '#dddddd'
set key outside top center horizontal maxrows 1 samplen 2 font 'sans,10'
set ylabel "ratio to config 2"
plot for [k=1:ntput] datadir.'/tput.dat' index (k - 1) using 1:2:(barwidth) \
         with boxes lc rgb color[k] title tput_title[k], \
     for [k=1:ntput] datadir.'/tput.dat' index (k - 1) \
         using 1:(0.04):(strcol(3) eq '-' ? '' : strcol(3)) \
         with labels rotate by 90 left textcolor rgb '#c62828' font 'sans-bold,9' notitle, \
     for [k=1:ntput] datadir.'/tput.dat' index (k - 1) using 1:($2 > 0 ? $4 : NaN):(0):($5 - $4) \
         with vectors heads size screen 0.003,90 lw 1 lc rgb '#303030' notitle, \
     datadir.'/tput.dat' index 1 using 1:(($5 > $2 ? $5 : $2) + 0.02):($2 > 0 ? sprintf('%.2f', $2) : '') \
         with labels rotate by 90 left font 'sans,9' textcolor rgb '#1b5e20' notitle, \
     1.0 with lines dt 2 lc rgb '#000000' notitle, \
     0.97 with lines dt 3 lw 1.5 lc rgb '#c62828' title '0.97 target for 3'

# ---- bottom left: return-path latency (c) --------------------------------------
set origin 0, 0
set size 0.55, 0.42
set title "c. migration shape: 64-byte return-path message latency (ms, log), lower is better" font 'sans,11'
set logscale y
set yrange [0.01:latency_ymax]
set ytics auto
set xrange [-0.6:5.6]
set xtics autofreq nomirror
set xtics ()
set key inside top left horizontal font 'sans,10'
set ylabel "ms"
plot datadir.'/latency.dat' using ($1 - 0.18):($2 > 0 ? $2 : NaN):(0.34):xtic(5) \
         with boxes lc rgb '#90caf9' title 'p50', \
     '' using ($1 + 0.18):($3 > 0 ? $3 : NaN):(0.34) with boxes lc rgb '#0d47a1' title 'p99', \
     '' using 1:(0.015):(strcol(4) eq '-' ? '' : strcol(4)) \
         with labels rotate by 90 left textcolor rgb '#c62828' font 'sans-bold,10' notitle, \
     (2 * plain_p99) with lines dt 3 lw 1.5 lc rgb '#c62828' title 'target: 2x p99 of 2'
unset logscale y

# ---- bottom right: per-call cost (g) ---------------------------------------------
set origin 0.55, 0
set size 0.45, 0.42
set title "g. cost per GnuTLS call, in-memory transport (ns), lower is better" font 'sans,11'
set yrange [0:percall_ymax]
set xrange [-0.6:4.6]
set xtics ()
set key inside top left font 'sans,10'
set ylabel "ns per call"
plot datadir.'/percall.dat' using 1:2:(0.6):xtic(4) with boxes lc rgb '#78909c' notitle, \
     '' using 1:($2 * 1.02):(strcol(3) eq '-' ? '' : strcol(3)) with labels offset 0,0.7 \
         font 'sans,10' notitle, \
     (plain_ns + 100) with lines dt 3 lw 1.5 lc rgb '#c62828' title 'budget: 2 + 100 ns'

unset multiplot
