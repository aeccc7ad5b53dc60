package org.fraudplatform.streaming;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.AggregateFunction;

import java.util.Arrays;
import java.util.HashSet;
import java.util.Set;

/**
 * Number of distinct values among the rows of a window that ends at the newest row.
 *
 * <p>{@code WINDOW_DISTINCT(event_ms, value, window_ms)} counts the distinct
 * {@code value} of the rows in {@code (t - window_ms, t]}, where {@code t} is the
 * newest row's {@code event_ms}. It is meant for the event-time {@code OVER}
 * windows that {@link WindowTotals} describes, and keeps the rows of that window
 * only.
 */
@FunctionHint(
        accumulator = @DataTypeHint(value = "RAW", bridgedTo = WindowDistinct.Rows.class),
        output = @DataTypeHint("BIGINT NOT NULL"))
public class WindowDistinct extends AggregateFunction<Long, WindowDistinct.Rows> {
    private static final long serialVersionUID = 1L;

    /** The rows of the window, oldest first, with their values. */
    public static final class Rows extends TimeOrderedRows {
        public String[] values = new String[INITIAL_CAPACITY];

        @Override
        void resize(int capacity) {
            values = Arrays.copyOfRange(values, first, first + capacity);
        }
    }

    @Override
    public Rows createAccumulator() {
        return new Rows();
    }

    public void accumulate(Rows rows, Long eventMs, String value, Long windowMs) {
        rows.advance(eventMs, windowMs);
        // The index first: append may replace the values array.
        int index = rows.append(eventMs);
        rows.values[index] = value;
    }

    @Override
    public Long getValue(Rows rows) {
        Set<String> distinct = new HashSet<>();
        for (int row = rows.first; row < rows.end; row++) {
            distinct.add(rows.values[row]);
        }
        return (long) distinct.size();
    }
}
