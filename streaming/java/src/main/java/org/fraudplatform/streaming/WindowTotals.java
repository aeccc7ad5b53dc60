package org.fraudplatform.streaming;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.AggregateFunction;

import java.util.Arrays;
import java.util.stream.IntStream;

/**
 * Count and sum of the events in several windows that end at the newest event.
 *
 * <p>{@code WINDOW_TOTALS(event_ms, weight, value, windows_ms)} is meant for an
 * event-time {@code OVER (PARTITION BY key ORDER BY rowtime)} window, which adds
 * the rows of a key in time order, all rows of one millisecond before it asks
 * for the result. For every length {@code n} of {@code windows_ms} it returns the
 * total weight and the exactly rounded sum of {@code value} of the rows in
 * {@code (t - n, t]}, where {@code t} is the newest row's {@code event_ms}: the
 * array {@code [weight of windows_ms[1], sum of windows_ms[1], weight of
 * windows_ms[2], ...]}. Rows of weight 0 only move {@code t}; a transaction can
 * ask for the windows of labels that way without being counted or kept.
 *
 * <p>The accumulator keeps the rows of the longest window only, so its size is
 * bounded by the rows of a key in that time.
 */
@FunctionHint(
        accumulator = @DataTypeHint(value = "RAW", bridgedTo = WindowTotals.Rows.class),
        output = @DataTypeHint("ARRAY<DOUBLE NOT NULL>"))
public class WindowTotals extends AggregateFunction<Double[], WindowTotals.Rows> {
    private static final long serialVersionUID = 1L;

    /** The rows of the longest window, oldest first, in parallel arrays. */
    public static final class Rows extends TimeOrderedRows {
        /** The window lengths as given, and their indexes from the shortest. */
        public long[] windowsMs = new long[0];
        public int[] byLength = new int[0];
        public int[] weights = new int[INITIAL_CAPACITY];
        public double[] values = new double[INITIAL_CAPACITY];

        @Override
        void resize(int capacity) {
            weights = Arrays.copyOfRange(weights, first, first + capacity);
            values = Arrays.copyOfRange(values, first, first + capacity);
        }
    }

    @Override
    public Rows createAccumulator() {
        return new Rows();
    }

    public void accumulate(Rows rows, Long eventMs, Integer weight, Double value, Long[] windowsMs) {
        if (rows.windowsMs.length == 0) {
            long[] lengths = Arrays.stream(windowsMs).mapToLong(Long::longValue).toArray();
            rows.windowsMs = lengths;
            rows.byLength = IntStream.range(0, lengths.length)
                    .boxed()
                    .sorted((a, b) -> Long.compare(lengths[a], lengths[b]))
                    .mapToInt(Integer::intValue)
                    .toArray();
        }
        rows.advance(eventMs, rows.windowsMs[rows.byLength[rows.byLength.length - 1]]);
        if (weight != 0) {
            int index = rows.append(eventMs);
            rows.weights[index] = weight;
            rows.values[index] = value;
        }
    }

    @Override
    public Double[] getValue(Rows rows) {
        Double[] totals = new Double[2 * rows.windowsMs.length];
        ExactSum sum = new ExactSum();
        long weight = 0;
        int row = rows.end - 1;
        // One pass from the newest row closes the windows from the shortest.
        for (int window : rows.byLength) {
            long start = rows.newestMs - rows.windowsMs[window];
            for (; row >= rows.first && rows.times[row] > start; row--) {
                weight += rows.weights[row];
                sum.add(rows.values[row]);
            }
            totals[2 * window] = (double) weight;
            totals[2 * window + 1] = sum.value();
        }
        return totals;
    }
}
