<?php
// Form codec benchmark, the PHP side of bench/form_bench.lua (bench/form.sh runs both):
// parse_str on the same bodies and http_build_query on the same params, measured the same way.
//   php form_bench.php calibrate cases.json SECONDS   per case: iterations for about SECONDS, bytes
//   php form_bench.php time cases.json KIND I N       seconds for N iterations of case I (after a warm-up)

[, $cmd, $path] = $argv;
$cases = json_decode(file_get_contents($path), true, 512, JSON_THROW_ON_ERROR);

function job(array $cases, string $kind, int $i): callable
{
    $case = $cases[$kind][$i - 1];
    if ($kind === 'decode') {
        $body = $case['body'];
        return function (int $k) use ($body) {
            for ($j = 0; $j < $k; $j++) {
                parse_str($body, $r);
            }
        };
    }
    $params = $case['params'];
    return function (int $k) use ($params) {
        for ($j = 0; $j < $k; $j++) {
            http_build_query($params);
        }
    };
}

if ($cmd === 'calibrate') {
    $seconds = (float)$argv[3];
    foreach (['decode', 'encode'] as $kind) {
        foreach (array_keys($cases[$kind]) as $k) {
            $fn = job($cases, $kind, $k + 1);
            $n = 1;
            while (true) {
                $t0 = hrtime(true);
                $fn($n);
                $dt = (hrtime(true) - $t0) / 1e9;
                if ($dt >= 0.2) {
                    $n = max(1, (int)round($n * $seconds / $dt));
                    break;
                }
                $n *= 2;
            }
            $case = $cases[$kind][$k];
            $bytes = $kind === 'decode' ? strlen($case['body']) : strlen(http_build_query($case['params']));
            printf("%s\t%d\t%d\t%d\n", $kind, $k + 1, $n, $bytes);
        }
    }
} elseif ($cmd === 'time') {
    [, , , $kind, $i, $n] = $argv;
    $fn = job($cases, $kind, (int)$i);
    $fn(max(1, intdiv((int)$n, 10)));
    gc_collect_cycles();
    $t0 = hrtime(true);
    $fn((int)$n);
    printf("%.6f\n", (hrtime(true) - $t0) / 1e9);
} else {
    fwrite(STDERR, "usage: form_bench.php calibrate CASES SECONDS | time CASES KIND I N\n");
    exit(2);
}
