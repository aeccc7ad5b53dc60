package org.fraudplatform.streaming;

import java.util.Arrays;

/**
 * Rows of one key in time order, dropped once they fall out of a window that
 * ends at the newest time seen. Subclasses keep each row's other fields in
 * arrays parallel to {@link #times}, between {@link #first} and {@link #end}.
 */
abstract class TimeOrderedRows {
    static final int INITIAL_CAPACITY = 8;

    public long newestMs = Long.MIN_VALUE;
    public long[] times = new long[INITIAL_CAPACITY];
    public int first;
    public int end;

    /** Moves the newest time to {@code eventMs}, dropping rows at or before {@code eventMs - windowMs}. */
    void advance(long eventMs, long windowMs) {
        newestMs = Math.max(newestMs, eventMs);
        long start = newestMs - windowMs;
        while (first < end && times[first] <= start) {
            first++;
        }
    }

    /** Appends a row at {@code eventMs}, which is not before the newest row; returns its index. */
    int append(long eventMs) {
        if (end == times.length) {
            int live = end - first;
            int capacity = Math.max(INITIAL_CAPACITY, 2 * live);
            times = Arrays.copyOfRange(times, first, first + capacity);
            resize(capacity);
            first = 0;
            end = live;
        }
        times[end] = eventMs;
        return end++;
    }

    /** Moves the other fields' arrays to start at {@link #first}, with {@code capacity} slots. */
    abstract void resize(int capacity);
}
